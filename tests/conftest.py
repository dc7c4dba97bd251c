import sys
from pathlib import Path

# Test-only helpers (the helpers/ package) import as top-level modules.
sys.path.insert(0, str(Path(__file__).parent))
