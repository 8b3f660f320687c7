"""`python -m roost`: the same as the `roost` command."""
from roost.runtime.supervisor import main

main()
