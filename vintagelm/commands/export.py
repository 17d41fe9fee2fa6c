"""`vintage export RUN --format hf|gguf --out PATH`: a trained GPT for other people's software:
a Hugging Face folder (transformers) or a GGUF file (llama.cpp, llama-cpp-python, Ollama)."""

HELP = "export a GPT run as a Hugging Face folder (transformers) or a GGUF file (llama.cpp, Ollama)"


def add_arguments(p):
    p.add_argument("run", metavar="RUN", help="a run directory (its latest checkpoint) or a checkpoint directory")
    p.add_argument("--format", required=True, choices=["hf", "gguf"],
                   help="hf: a folder for transformers' from_pretrained; gguf: one file for llama.cpp and Ollama")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="hf: the folder to write (new, empty, or an earlier export); gguf: the file, e.g. model.gguf")
    p.add_argument("--dtype", choices=["f32", "f16"], default="f32",
                   help="precision of the weights: f32 (default: our logits exactly) or f16 (half the size)")


def run(args):
    from vintagelm.export.gguf_file import write_gguf
    from vintagelm.export.hf_dir import write_hf
    from vintagelm.export.source import DTYPES, load_run

    source = load_run(args.run)
    write = {"hf": write_hf, "gguf": write_gguf}[args.format]
    path = write(source, args.out, DTYPES[args.dtype])
    kind = "chat model" if source.chat else "model"
    print(f"wrote {path}: {source.name} step {source.step} ({kind}, {source.model.num_params():,} parameters, "
          f"{args.dtype})")
    return 0
