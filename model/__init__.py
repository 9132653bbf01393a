"""The model side: OpenELM itself (`openelm`, its architecture `config`, the named `presets`), decoding
(`generate`), Hugging Face-format folders (`hf_folder`), export to MLX and HF (`export`), training (`train/`)
and the `elm-train` command (`cli`). It sits above corpus and pipelines; inside it, only `model.train.data`
reaches the corpus store, the mixture sampler and the Ray pipelines.
"""
