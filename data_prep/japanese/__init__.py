"""Japanese synthetic speech at scale (RECIPE.md "Japanese": Fineweb-2 text read by Kokoro-82M).

``sentences``: sentence splitting and filtering with per-reason counts; ``generate``: streamed
input, the ``ctc_text`` (katakana CTC target) hook and ``generate_japanese`` on top of
``data_prep.tts.generate.generate_corpus``; ``python -m data_prep.japanese --help``: the CLI.
"""
