"""A local Hub-compatible server for development and tests (``coreml-publish devhub``).

It speaks the subset of the Hugging Face Hub HTTP API that ``huggingface_hub`` uses to create repos,
commit (regular and LFS files), list, resolve and download, with real commit history, branches, tags,
private repos and tokens.  It is a development tool: it keeps everything on local disk, binds to
127.0.0.1 by default, and its tokens are plain strings from its own data folder.
"""
