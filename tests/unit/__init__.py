"""Tests that need no Docker engine."""
