"""Flask blueprints: JSON API, HTML pages and the browser WebSocket."""
