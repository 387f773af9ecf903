"""The service: HTTP front (Flask), job store, ZeroMQ broker and workers."""
from app.web import create_app

__all__ = ["create_app"]
