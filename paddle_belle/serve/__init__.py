"""`paddle-belle serve`: an OpenAI-compatible HTTP server (app.py) over a model run on one thread (engine.py)."""
from paddle_belle.serve.app import create_app, serve  # noqa: F401
from paddle_belle.serve.engine import Engine  # noqa: F401
