"""Generation backends: what a backend is (`api`), the registry by name (`registry`: `hf`,
`hf-generate`, `canned`), the transformers backends (`hf`, `continuous`) and what they share (KV-cache
editing, batch sizing, stopping rules). The package imports nothing itself."""
