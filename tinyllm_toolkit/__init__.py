"""The toolkit: what real runs need on top of the chapter's code (tinyllm.py), one concern a module.

    files        atomic writes, checked tokenizers and checkpoints, export folders
    runs         fit: checkpoints, exact resume, Ctrl-C, several processes (DDP)
    cli          the command line (python tinyllm.py ..., or the `tinyllm` command)
    export_hf    export to Hugging Face transformers
    export_onnx  export to ONNX and the web page

Every module builds on tinyllm.py's definitions and never copies them.
"""
