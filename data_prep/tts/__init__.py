"""Offline synthetic speech corpora: ``generate.generate_corpus`` / the ``granite-tts`` CLI.

Backends live in ``backends`` (espeak-ng, Kokoro-82M), the Japanese kana reading for espeak-ng in
``ja_reading``, the columns and the run summary in ``corpus`` and the dataset card writer in
``card``; shard files, resume and cleanup are ``data_prep.shards``.
"""
