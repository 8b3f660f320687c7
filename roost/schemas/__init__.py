from roost.schemas.rows import (
    MESSAGES,
    PREFERENCE,
    PREFERENCE_ROWS,
    REJECT,
    SCHEMAS,
    SFT,
    SFT_ROWS,
    RowSchema,
    check_messages,
    row_id,
)

__all__ = [
    "MESSAGES", "PREFERENCE", "PREFERENCE_ROWS", "REJECT", "SCHEMAS", "SFT", "SFT_ROWS",
    "RowSchema", "check_messages", "row_id",
]
