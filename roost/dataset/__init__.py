"""Rows in and out: rows.py (row kinds, input shapes, the text views stages read), sources.py
(inputs: Parquet, JSON Lines, JSON, CSV, the Hub, read in bounded batches), writer.py (atomic
Hub-style shards, rejects, manifest; atomic_path, the one way a file is written whole),
lineage.py and portable.py (what a manifest records of inputs and paths), languages.py (the
languages of the rows, for the card), show.py (`roost inspect`)."""
