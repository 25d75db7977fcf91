from edgetune.tuners.lora.config import LoraConfig
from edgetune.tuners.lora.tuner import LoraTuner, default_target_modules, peft_lora_config

__all__ = ["LoraConfig", "LoraTuner", "default_target_modules", "peft_lora_config"]
