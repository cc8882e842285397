"""What the commands stand on, one module each; nothing here is needed to read or copy an adapter file.

    adapters.py        the method registry; adapter folders in Hugging Face PEFT's layout (save, load)
    cli.py             the tools' one rule for bad input: one `error: ...` line, exit 1 (2 usage, 130 Ctrl-C)
    commonsense.py     LLM-Adapters' commonsense protocol: prompt, loss masking, cut-offs, answer patterns
    safetensors_io.py  checkpoint files: the safetensors reader (memory-mapped) and atomic writer, shards
    gguf.py            llama.cpp's GGUF read and dequantized into a Hugging Face llama folder (prepare.py)
    safety.py          what makes a train.py run safe: one writer per folder, Ctrl-C held to a step's end,
                       the resumable state and its checks, several processes (torchrun)
"""
