"""lm-evaluation-harness tasks on ftlab's engine: which task an `lmeval:` entry names and where its
data comes from (`tasks`), ftlab's engine behind lm-eval's model interface (`model`), answers kept
as they are computed (`cache`) and the evaluation runner (`runner`). The package imports nothing itself."""
