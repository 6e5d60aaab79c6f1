"""End-to-end tests, on a real Docker engine with images built from the Dockerfiles."""
