"""peft's own LoRA merge, as the independent reference the tests compare our export's merge with."""

from __future__ import annotations

from peft.tuners.lora import LoraLayer


def peft_merge_lora(speech):
    """Fold the LoRA adapter into the LLM weights in place with peft's ``LoraLayer.merge`` and drop it."""
    if not speech.has_lora:
        return speech
    for name, module in list(speech.hf.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(speech.hf.get_submodule(parent_name), child, module.get_base_layer())
    speech.hf._hf_peft_config_loaded = False
    speech.hf.peft_config = {}
    speech.config.has_lora_adapter = False
    return speech
