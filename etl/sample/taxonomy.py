"""The sample's product world: category tree, vocabulary, brands, colours, styles, complementary kits.

Kept as plain data so the structure the models are meant to learn (text ↔ category, image shape ↔ group,
image palette ↔ leaf, co-purchase ↔ complementary kits) can be read in one place.
Term strings may contain ``{a|b|c}`` alternatives; each product picks one (see ``fill_alternatives``).
"""

from __future__ import annotations

import colorsys
import random
import re
from dataclasses import dataclass

ROOT = "Electronics"


@dataclass(frozen=True)
class Group:
    """A level-1 category; its products share an image shape and a brand pool."""

    name: str
    shape: str
    main_category: str
    brands: tuple[str, ...]
    terms: tuple[str, ...]


@dataclass(frozen=True)
class Leaf:
    """A leaf category; its products share a noun, a vocabulary, a price level and an image palette/texture."""

    path: tuple[str, ...]  # below the root, e.g. ("Camera & Photo", "Lenses", "Camera Lenses")
    noun: str
    terms: tuple[str, ...]
    price: float  # median price in USD
    weight: float  # relative share of products (ignored for rare leaves)
    rare: bool = False  # gets only a handful of products (3-8), whatever n_products is

    @property
    def group(self) -> str:
        return self.path[0]

    @property
    def name(self) -> str:
        return self.path[-1]


GROUPS: tuple[Group, ...] = (
    Group("Camera & Photo", "circle", "Camera & Photo",
          ("Lumora", "Aperix", "Kestrel Optics", "Voltrix", "Fotonik"),
          ("precision optics", "fast autofocus", "low-light performance")),
    Group("Computers & Accessories", "wide_rect", "Computers",
          ("Nuvia", "Corebyte", "Voltrix", "Tessel", "Arcwise"),
          ("plug and play", "works with Windows and macOS", "ergonomic design")),
    Group("Data Storage", "card", "Computers",
          ("Datavault", "Corebyte", "Strata", "Voltrix"),
          ("fast read speeds", "shockproof and waterproof", "reliable data retention")),
    Group("Headphones & Audio", "ring", "All Electronics",
          ("Sonique", "Auralis", "Bassline", "Voltrix", "Hushwave"),
          ("rich bass", "crystal clear sound", "long battery life")),
    Group("Cell Phones & Accessories", "tall_rect", "Cell Phones & Accessories",
          ("Nuvia", "Pocketron", "Shieldex", "Voltrix", "Amperio"),
          ("fast charging", "slim profile", "drop protection")),
    Group("Television & Video", "screen", "Home Audio & Theater",
          ("Visara", "Panoview", "Streamly", "Nuvia"),
          ("4K Ultra HD", "HDR support", "easy setup")),
    Group("Wearable Technology", "watch", "All Electronics",
          ("Pulsefit", "Tempo", "Nuvia", "Voltrix"),
          ("heart rate monitoring", "water resistant", "sleep tracking")),
    Group("Car & Vehicle Electronics", "hexagon", "Car Electronics",
          ("Roadsense", "Drivelink", "Voltrix", "Amperio"),
          ("easy installation", "12V compatible", "night vision")),
)

LEAVES: tuple[Leaf, ...] = (
    # Camera & Photo
    Leaf(("Camera & Photo", "Digital Cameras", "DSLR Cameras"), "DSLR Camera",
         ("{24.2|26|32.5}MP APS-C sensor", "optical viewfinder", "{4K|1080p} video recording",
          "dual SD card slots", "weather-sealed body"), 650, 1.2),
    Leaf(("Camera & Photo", "Digital Cameras", "Mirrorless Cameras"), "Mirrorless Camera",
         ("{20|24|33}MP full-frame sensor", "in-body image stabilization", "electronic viewfinder",
          "eye-tracking autofocus", "{4K 60p|6K} video"), 900, 1.0),
    Leaf(("Camera & Photo", "Digital Cameras", "Point & Shoot Cameras"), "Point and Shoot Camera",
         ("{10|20|30}x optical zoom", "pocket-size body", "{16|20}MP sensor", "built-in flash"), 180, 0.8),
    Leaf(("Camera & Photo", "Lenses", "Camera Lenses"), "Camera Lens",
         ("{18-55|24-70|50|85|70-200}mm focal length", "f/{1.8|2.8|4} aperture", "silent stepping motor",
          "{58|67|77}mm filter thread"), 420, 1.3),
    Leaf(("Camera & Photo", "Lenses", "Lens Filters"), "Lens Filter",
         ("{52|58|67|77}mm UV filter", "multi-coated glass", "ultra slim aluminum frame",
          "reduces glare and reflections"), 25, 0.9),
    Leaf(("Camera & Photo", "Tripods & Monopods", "Tripods"), "Tripod",
         ("{50|60|72}-inch maximum height", "360° panoramic ball head", "quick release plate",
          "aluminum alloy legs"), 60, 1.0),
    Leaf(("Camera & Photo", "Tripods & Monopods", "Monopods"), "Monopod",
         ("{5|6}-section telescoping leg", "folding support feet", "carbon fiber tube"), 45, 0.0, rare=True),
    Leaf(("Camera & Photo", "Bags & Cases", "Camera Bags"), "Camera Bag",
         ("padded adjustable dividers", "fits DSLR and {2|3|4} lenses", "water-resistant nylon",
          "tripod holder straps"), 40, 0.9),
    Leaf(("Camera & Photo", "Lighting & Studio", "Flashes"), "Speedlite Flash",
         ("guide number {58|60}", "TTL high-speed sync", "wireless master and slave modes",
          "{1.5|2} second recycle time"), 90, 0.6),
    # Computers & Accessories
    Leaf(("Computers & Accessories", "Laptops", "Traditional Laptops"), "Laptop",
         ("{14|15.6|17.3}-inch FHD display", "{8|16|32}GB RAM", "{256|512}GB SSD", "backlit keyboard",
          "up to {8|10|12} hours battery"), 700, 1.4),
    Leaf(("Computers & Accessories", "Laptops", "2 in 1 Laptops"), "2-in-1 Laptop",
         ("{13.3|14}-inch touchscreen", "360° flip hinge", "active pen support", "{8|16}GB RAM"), 820, 0.7),
    Leaf(("Computers & Accessories", "Computer Accessories & Peripherals", "Keyboards, Mice & Accessories",
          "Mice"), "Wireless Mouse",
         ("{1600|2400|4000} DPI optical sensor", "2.4GHz wireless receiver", "silent clicks",
          "ergonomic right-hand shape"), 20, 1.3),
    Leaf(("Computers & Accessories", "Computer Accessories & Peripherals", "Keyboards, Mice & Accessories",
          "Keyboards"), "Keyboard",
         ("mechanical {blue|brown|red} switches", "full-size layout with number pad", "RGB backlight",
          "spill-resistant design"), 45, 1.0),
    Leaf(("Computers & Accessories", "Computer Accessories & Peripherals", "Bags, Cases & Sleeves",
          "Laptop Bags"), "Laptop Backpack",
         ("fits up to {15.6|17}-inch laptops", "USB charging port", "anti-theft back pocket",
          "padded laptop compartment"), 35, 1.0),
    Leaf(("Computers & Accessories", "Computer Accessories & Peripherals", "USB Hubs"), "USB Hub",
         ("{4|7|10}-port USB 3.0", "{60|100}W power delivery pass-through", "aluminum housing",
          "4K HDMI output"), 28, 0.9),
    Leaf(("Computers & Accessories", "Computer Accessories & Peripherals", "Laptop Cooling Pads"),
         "Laptop Cooling Pad", ("{4|5|6} quiet fans", "adjustable height stand", "blue LED lights"), 30, 0.0,
         rare=True),
    Leaf(("Computers & Accessories", "Monitors", "Computer Monitors"), "Monitor",
         ("{24|27|32}-inch IPS panel", "{75|144|165}Hz refresh rate", "{1080p|1440p|4K} resolution",
          "eye-care flicker free"), 230, 1.0),
    # Data Storage
    Leaf(("Data Storage", "Memory Cards", "SD Cards"), "SD Card",
         ("{64|128|256|512}GB capacity", "UHS-I U3 V30", "up to {90|170}MB/s read", "for 4K video cameras"),
         18, 1.2),
    Leaf(("Data Storage", "Memory Cards", "microSD Cards"), "microSD Card",
         ("{64|128|256|512}GB capacity", "A2 app performance", "with SD adapter",
          "for dash cams and phones"), 15, 1.1),
    Leaf(("Data Storage", "External Data Storage", "External Hard Drives"), "Portable Hard Drive",
         ("{1|2|4|5}TB capacity", "USB 3.0 connection", "automatic backup software", "slim metal case"), 75, 0.9),
    Leaf(("Data Storage", "External Data Storage", "USB Flash Drives"), "USB Flash Drive",
         ("{32|64|128|256}GB capacity", "USB 3.1 Type-A", "retractable connector", "keychain loop"), 12, 0.8),
    # Headphones & Audio
    Leaf(("Headphones & Audio", "Headphones", "Over-Ear Headphones"), "Over-Ear Headphones",
         ("active noise cancelling", "{30|40|60} hour playtime", "memory foam ear cushions",
          "foldable design"), 120, 1.2),
    Leaf(("Headphones & Audio", "Headphones", "Earbuds"), "Wireless Earbuds",
         ("Bluetooth 5.{2|3}", "charging case with {24|32} hours", "IPX{4|5|7} sweatproof",
          "touch controls"), 50, 1.4),
    Leaf(("Headphones & Audio", "Speakers", "Bluetooth Speakers"), "Bluetooth Speaker",
         ("{10|20|30}W stereo sound", "IPX7 waterproof", "{12|24} hour battery", "built-in microphone"), 45, 1.1),
    Leaf(("Headphones & Audio", "Speakers", "Bookshelf Speakers"), "Bookshelf Speakers",
         ("{4|5.25}-inch woofers", "wooden enclosure", "RCA and optical inputs", "pair of two"), 130, 0.6),
    Leaf(("Headphones & Audio", "Microphones & Accessories", "Microphones"), "USB Microphone",
         ("cardioid condenser capsule", "{16|24}-bit / {48|96}kHz", "zero-latency monitoring",
          "shock mount included"), 70, 0.7),
    Leaf(("Headphones & Audio", "Home Theater", "Soundbars"), "Soundbar",
         ("{2.0|2.1|5.1} channel", "wireless subwoofer", "Dolby Audio", "HDMI ARC connection"), 160, 0.7),
    # Cell Phones & Accessories
    Leaf(("Cell Phones & Accessories", "Cell Phones", "Unlocked Cell Phones"), "Unlocked Smartphone",
         ("{6.1|6.5|6.7}-inch OLED display", "{64|128|256}GB storage", "triple camera system",
          "5G ready"), 480, 1.1),
    Leaf(("Cell Phones & Accessories", "Cases, Holsters & Sleeves", "Phone Cases"), "Phone Case",
         ("military grade drop protection", "raised bezels for screen and camera", "shockproof TPU bumper",
          "wireless charging compatible"), 14, 1.6),
    Leaf(("Cell Phones & Accessories", "Accessories", "Screen Protectors"), "Screen Protector",
         ("9H tempered glass", "{2|3}-pack", "bubble-free installation frame", "case friendly"), 9, 1.2),
    Leaf(("Cell Phones & Accessories", "Accessories", "Chargers & Power Adapters", "Wall Chargers"),
         "Wall Charger", ("{20|30|65}W USB-C PD", "GaN technology", "foldable plug", "dual port"), 22, 1.1),
    Leaf(("Cell Phones & Accessories", "Accessories", "Chargers & Power Adapters", "Car Chargers"),
         "Car Charger", ("{36|48}W dual port", "quick charge 3.0", "aluminum alloy shell", "LED ring"), 15, 0.8),
    Leaf(("Cell Phones & Accessories", "Accessories", "Chargers & Power Adapters", "Power Banks"),
         "Power Bank", ("{10000|20000|26800}mAh capacity", "USB-C input and output", "LED power display",
                        "charges two devices at once"), 30, 1.1),
    Leaf(("Cell Phones & Accessories", "Accessories", "Cables"), "Charging Cable",
         ("{3|6|10} ft braided nylon", "USB-C to USB-C", "{60|100}W fast charging", "{2|3}-pack"), 11, 1.2),
    # Television & Video
    Leaf(("Television & Video", "Televisions", "Smart TVs"), "Smart TV",
         ("{43|55|65|75}-inch 4K UHD", "HDR10 and Dolby Vision", "built-in streaming apps",
          "voice remote"), 520, 1.1),
    Leaf(("Television & Video", "Streaming Media Players", "Streaming Sticks"), "Streaming Stick",
         ("4K HDR streaming", "Wi-Fi 6 support", "voice remote included", "plugs into HDMI"), 40, 0.9),
    Leaf(("Television & Video", "Accessories", "TV Mounts"), "TV Wall Mount",
         ("fits {32|42|55}-{70|85}-inch TVs", "full motion swivel and tilt", "VESA 600x400",
          "holds up to {99|132} lbs"), 35, 0.9),
    Leaf(("Television & Video", "Projectors", "Home Theater Projectors"), "Projector",
         ("native 1080p", "{9000|12000} lumens", "{200|300}-inch max screen", "keystone correction"), 150, 0.7),
    Leaf(("Television & Video", "Accessories", "Remote Controls"), "Universal Remote",
         ("controls up to {4|8} devices", "backlit buttons", "learning function"), 20, 0.0, rare=True),
    # Wearable Technology
    Leaf(("Wearable Technology", "Smartwatches", "Fitness Smartwatches"), "Smartwatch",
         ("{1.4|1.7|1.9}-inch AMOLED display", "GPS and heart rate", "{7|10|14} day battery",
          "5ATM water resistance"), 160, 1.1),
    Leaf(("Wearable Technology", "Activity Trackers", "Fitness Trackers"), "Fitness Tracker",
         ("step and calorie counter", "sleep monitor", "SpO2 sensor", "slim band design"), 45, 0.8),
    Leaf(("Wearable Technology", "Accessories", "Watch Bands"), "Watch Band",
         ("{20|22}mm quick release", "soft silicone strap", "breathable sport loop", "{2|3}-pack"), 12, 0.8),
    # Car & Vehicle Electronics
    Leaf(("Car & Vehicle Electronics", "Car Electronics", "Dash Cameras"), "Dash Cam",
         ("{1080p|1440p|4K} front camera", "{140|170}° wide angle", "loop recording", "parking monitor",
          "G-sensor"), 70, 1.0),
    Leaf(("Car & Vehicle Electronics", "Car Electronics", "GPS Units"), "GPS Navigator",
         ("{5|7}-inch touchscreen", "lifetime map updates", "spoken turn-by-turn directions"), 120, 0.0,
         rare=True),
    Leaf(("Car & Vehicle Electronics", "Car Accessories", "Car Phone Mounts"), "Car Phone Mount",
         ("dashboard and windshield suction", "one-touch release", "360° rotation",
          "fits 4-7 inch phones"), 18, 1.0),
)

# Products bought together: a purchase from one leaf of a kit often comes with purchases from other leaves of the
# same kit (camera ↔ memory card ↔ tripod, laptop ↔ bag ↔ mouse, ...). Kits cross groups on purpose.
KITS: tuple[tuple[str, ...], ...] = (
    ("DSLR Cameras", "Mirrorless Cameras", "Camera Lenses", "Lens Filters", "SD Cards", "Tripods", "Camera Bags",
     "Flashes", "Monopods"),
    ("Point & Shoot Cameras", "SD Cards", "Camera Bags", "Tripods"),
    ("Traditional Laptops", "2 in 1 Laptops", "Laptop Bags", "Mice", "Keyboards", "USB Hubs",
     "External Hard Drives", "Laptop Cooling Pads", "Computer Monitors"),
    ("Computer Monitors", "Keyboards", "Mice", "USB Flash Drives"),
    ("Unlocked Cell Phones", "Phone Cases", "Screen Protectors", "Wall Chargers", "Cables", "Power Banks",
     "Earbuds"),
    ("Smart TVs", "TV Mounts", "Streaming Sticks", "Soundbars", "Remote Controls"),
    ("Home Theater Projectors", "Streaming Sticks", "Bookshelf Speakers"),
    ("Fitness Smartwatches", "Fitness Trackers", "Watch Bands", "Wall Chargers"),
    ("Dash Cameras", "microSD Cards", "Car Chargers", "Car Phone Mounts", "GPS Units"),
    ("Over-Ear Headphones", "Microphones", "Bookshelf Speakers"),
    ("Bluetooth Speakers", "Power Banks", "Cables"),
)

COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("Black", (28, 28, 30)), ("White", (236, 236, 232)), ("Silver", (188, 190, 196)),
    ("Space Gray", (96, 99, 106)), ("Red", (200, 34, 44)), ("Blue", (36, 84, 204)), ("Navy", (24, 34, 92)),
    ("Green", (44, 150, 74)), ("Rose Gold", (214, 152, 140)), ("Yellow", (238, 200, 44)),
    ("Orange", (238, 122, 34)), ("Purple", (122, 62, 170)),
)

# style name → (title phrase, image pattern of the product's body)
STYLES: tuple[tuple[str, str, str], ...] = (
    ("Classic", "Classic Edition", "solid"),
    ("Sport", "Sport Edition", "diagonal"),
    ("Pro", "Pro Series", "grid"),
    ("Eco", "Eco Line", "dots"),
    ("Retro", "Retro Design", "bands"),
)

GENERIC_FEATURES: tuple[str, ...] = (
    "{1|2|3}-year manufacturer warranty", "friendly customer support", "ships in frustration-free packaging",
    "compact and lightweight", "premium build quality", "tested for durability",
)

_ALTERNATIVES = re.compile(r"\{([^{}]*\|[^{}]*)\}")


def fill_alternatives(text: str, rng: random.Random) -> str:
    """Replace every ``{a|b|c}`` in ``text`` by one of its alternatives."""
    return _ALTERNATIVES.sub(lambda m: rng.choice(m.group(1).split("|")), text)


def taxonomy_for(category: str) -> str:
    """Canonical category name for ``category`` (case-insensitive); only Electronics has a sample world."""
    if category.strip().lower() != ROOT.lower():
        raise ValueError(f"the sample source has no category {category!r}; available: {ROOT!r}")
    return ROOT


def complements() -> dict[str, tuple[str, ...]]:
    """Leaf name → the other leaves sharing a kit with it (sorted, so iteration order is stable)."""
    partners: dict[str, set[str]] = {leaf.name: set() for leaf in LEAVES}
    for kit in KITS:
        for name in kit:
            partners[name].update(other for other in kit if other != name)
    return {name: tuple(sorted(others)) for name, others in partners.items()}


def category_tree() -> dict:
    """Nested ``{name: {child: {...}}}`` tree of all leaf paths under the root."""
    tree: dict = {}
    for leaf in LEAVES:
        node = tree.setdefault(ROOT, {})
        for part in leaf.path:
            node = node.setdefault(part, {})
    return tree


def leaf_palette(index: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Two background colours for leaf ``index``: hues spread by the golden angle so leaves look distinct."""
    hue = (index * 0.6180339887) % 1.0
    light = colorsys.hsv_to_rgb(hue, 0.30 + 0.25 * ((index * 7) % 5) / 4, 0.92)
    dark = colorsys.hsv_to_rgb((hue + 0.08) % 1.0, 0.65, 0.45 + 0.2 * ((index * 3) % 4) / 3)
    return (tuple(round(255 * c) for c in light), tuple(round(255 * c) for c in dark))  # type: ignore[return-value]


def _check() -> None:
    """Fail at import time if the data tables disagree (a kit naming an unknown leaf, a leaf of no group)."""
    names = [leaf.name for leaf in LEAVES]
    if len(set(names)) != len(names):
        raise RuntimeError("sample taxonomy: leaf names must be unique")
    groups = {group.name for group in GROUPS}
    if any(leaf.group not in groups for leaf in LEAVES):
        raise RuntimeError("sample taxonomy: every leaf needs a known group")
    unknown = {name for kit in KITS for name in kit} - set(names)
    if unknown:
        raise RuntimeError(f"sample taxonomy: kits name unknown leaves {sorted(unknown)}")


_check()
