"""The Sanic edge: subscriber and feed WebSockets, fan-out, HTTP endpoints."""
