"""The LLaMA-layout SentencePiece tokenizer with CoreNet's conventions (`tokenizer`), the build's
encoder that assembles sentencepiece's exact ids from a per-segment cache (`segments`), and the
Hugging Face twin that gives the same ids under transformers and mlx-lm (`hf_twin`).
"""
