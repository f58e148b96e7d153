"""Offline synthetic speech corpora: ``generate.generate_corpus`` / the ``granite-tts`` CLI.

Backends live in ``backends`` (espeak-ng, Kokoro-82M), the Japanese kana reading for espeak-ng in
``ja_reading`` and the dataset card writer in ``card``.
"""
