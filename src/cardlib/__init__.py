"""cardlib: Pokémon card recognition from teacher to Hailo-8."""
import warnings

# libraries import tqdm.auto, which asks for ipywidgets inside a kernel; cardlib's bars are plain text on purpose
warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"
