"""How an answer is judged: answer kinds (`answer_kinds`: one definition each), extraction and
normalisation rules, task metrics, scoring modes, and log-likelihood scoring (choice formats,
prompts and option log-probabilities). The package imports nothing itself."""
