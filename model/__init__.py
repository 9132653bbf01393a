"""The model side: OpenELM itself (`openelm`, its architecture `config`, the named `presets`), decoding
(`generate`), Hugging Face-format folders (`hf_folder`), a model named on the command line (`source`),
training (`train/`), evaluation with lm-evaluation-harness (`eval/`), export to MLX and HF (`export`, with the
self-contained transformers code of `hf_remote/`) and the `elm-train` command (`cli`). It sits above corpus
and pipelines; inside it, only `model.train.data` reaches the corpus store, the mixture sampler and the Ray
pipelines.
"""
