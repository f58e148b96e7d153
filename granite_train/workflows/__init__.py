"""What the workflow commands (``finetune``, ``add-language``, ``demo``, ``coverage``) share.

* :mod:`.command_config` -- a command's Hydra config as its typed dataclass, every key checked
  (an unknown key names where it came from: the config file or a command-line override);
* :mod:`.finetune_config`, :mod:`.add_language_config`, :mod:`.demo_config` -- those dataclasses,
  which hold every default once and document every field;
* :mod:`.before_after` -- the shared core: score -> train -> score -> ``results.md`` /
  ``results.json`` (with the optional data report);
* :mod:`.recipe_overrides` -- sources and trainer choice as recipe overrides;
* :mod:`.coverage_files` -- ``coverage.md`` + ``coverage.json``.
"""
