"""The data contract: what a corpus is, with no Ray and no model.

The manifest (`manifest`) names the sources, their text rules and their mixture; `paths`
says where data lives; `console` is what both command lines do with the terminal first. Per-document text steps (`text/`) and the tokenizer (`tokenizer/`)
turn records into token chunks; the store (`store/`) is the on-disk corpus (shards, ledger,
corpus.json, counts); mixing (`mixing/`) serves exact token-weighted training sequences from
it; inspection (`inspection/`) counts and shows what a corpus holds; the mirror (`mirror/`)
writes the offline sample of every upstream subset. `pipelines` runs these pieces on Ray,
`model` trains on what `mixing` serves; neither is imported from here.
"""
