from edgetune.tuners.fala.config import FalaConfig
from edgetune.tuners.fala.tuner import FalaTuner

__all__ = ["FalaConfig", "FalaTuner"]
