"""The selection stage: prompts, token ids, the engine rounds, parsing, logprob picks."""
