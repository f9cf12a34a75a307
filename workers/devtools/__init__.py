"""Development tools: the local Hub-compatible server (:mod:`workers.devtools.devhub`) and the tiny-pipeline
builder (:mod:`workers.devtools.tiny`).

They are used by the CLI's ``devhub`` and ``tiny-pipeline`` commands (imported inside the commands), by the
tests, the demo and the benchmarks.  Nothing the service runs imports this package, and the Docker image
leaves it out (see ``.dockerignore``).
"""
