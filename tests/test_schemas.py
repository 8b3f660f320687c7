"""Row schemas: what each form accepts and the reason it gives for what it refuses."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from roost.schemas import PREFERENCE_ROWS, SFT_ROWS, row_id

USER = {"role": "user", "content": "Which is larger, 9.11 or 9.9?"}
GOOD = {"role": "assistant", "content": "9.9 is larger."}
BAD = {"role": "assistant", "content": "9.11 is larger."}


def pref(**kw):
    row = {"prompt": [USER], "chosen": [GOOD], "rejected": [BAD], "method": "reward_ranked", "iteration": 0}
    row.update(kw)
    row.setdefault("id", row_id(row["prompt"], row["chosen"], row["rejected"]))
    return row


def test_preference_rows_follow_trl_conversational_form():
    assert PREFERENCE_ROWS.problem(pref()) is None
    assert "identical" in PREFERENCE_ROWS.problem(pref(rejected=[GOOD]))
    assert "assistant messages" in PREFERENCE_ROWS.problem(pref(chosen=[USER]))
    assert "last message must have role 'user'" in PREFERENCE_ROWS.problem(pref(prompt=[USER, GOOD]))
    assert "missing required" in PREFERENCE_ROWS.problem(pref(prompt=None))
    assert "type error" in PREFERENCE_ROWS.problem(pref(iteration="first"))
    assert PREFERENCE_ROWS.problem(pref(id="p1")) == "id: does not match content"


def test_sft_rows_and_stable_ids(tmp_path):
    messages = [{"role": "system", "content": "Be exact."}, USER, GOOD]
    row = {"id": row_id(messages), "messages": messages}
    assert SFT_ROWS.problem(row) is None
    assert row_id(messages) == row_id([dict(m) for m in messages])  # content decides, not identity
    assert SFT_ROWS.problem({**row, "messages": [USER, GOOD, USER]}) == "messages: last message must have role 'assistant'"
    assert "system message not first" in SFT_ROWS.problem({"id": "x", "messages": [USER, messages[0], GOOD]})
    # a written file round-trips through pyarrow with the declared schema
    pq.write_table(pa.Table.from_pylist([row], schema=SFT_ROWS.arrow), tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet").to_pylist()[0]["messages"] == messages
