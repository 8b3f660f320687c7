"""`python -m roost`: the same as the `roost` command."""
from roost.supervisor import main

main()
