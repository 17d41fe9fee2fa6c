"""`vintage export`: a trained GPT run as files for software we did not write.

    source.py         the run's latest checkpoint, checked (a GPT, its tokenizer, finite weights)
    layouts.py        which outside architecture the config is (gpt2, llama, qwen3), and its GGUF tensors
    hf_dir.py         a Hugging Face folder: transformers' AutoModelForCausalLM / AutoTokenizer
    gguf_file.py      one GGUF file: llama.cpp, llama-cpp-python, Ollama, LM Studio
    gguf_vocab.py     our tokenizers as llama.cpp's byte-level BPE vocabulary
    chat_template.py  our chat frame as the Jinja template both formats carry

An edge of the house: the core never imports it.
"""
