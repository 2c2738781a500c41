from . import hf as _hf  # registers AutoConfig/AutoModelForCausalLM (lazily: on transformers' auto import)
