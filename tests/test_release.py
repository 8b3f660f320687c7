"""release_all: every registered model cache is closed and emptied (pure logic: stand-in
objects with a close(), no model). The registries are swapped for empty ones, so the
session's shared engines (other tests' fixtures) are not closed by this test."""
from roost.engines import base, release_all
from roost.engines.base import holds, on_release


def test_release_all_closes_and_empties_every_registered_cache(monkeypatch):
    monkeypatch.setattr(base, "_HELD", [])
    monkeypatch.setattr(base, "_RELEASERS", [])
    closed = []

    class Held:
        def close(self):
            closed.append(self)

    first, second = Held(), Held()
    engines = holds({"a": first, "b": object()})  # a held object without close() is only dropped
    backends = holds({"c": second})
    dropped = []
    on_release(lambda: dropped.append(True))
    release_all()
    assert closed == [first, second] and engines == {} and backends == {} and dropped == [True]
    release_all()  # nothing held: nothing closed twice
    assert closed == [first, second]

