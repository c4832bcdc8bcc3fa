"""cardlib: Pokémon card recognition from teacher to Hailo-8."""
__version__ = "0.1.0"
