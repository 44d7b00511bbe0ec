"""Earmark: a self-hosted metering gateway for OpenAI-compatible speech-to-text APIs."""

__version__ = "0.1.0"
