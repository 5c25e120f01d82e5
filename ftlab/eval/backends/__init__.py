"""Generation backends: what a backend is (`api`), the registry by name (`registry`: `hf`,
`hf-generate`, `llama.cpp`, `canned`), the transformers backends (`hf`, `continuous`), llama.cpp's
(`llama_cpp`) and what they share (KV-cache editing, batch sizing, stopping rules). The package
imports nothing itself."""
