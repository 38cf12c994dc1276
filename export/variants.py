"""The SAM 2 family members we can build, and where their official weights live."""

from __future__ import annotations

from dataclasses import dataclass

SAM21_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"
SAM2_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/072824"


@dataclass(frozen=True)
class Variant:
    name: str  # e.g. "sam2.1_hiera_tiny", also the checkpoint's file stem
    family: str  # "sam2" or "sam2.1"
    size: str  # tiny | small | base_plus | large
    config: str  # hydra config name inside the sam2 package
    url: str
    sha256: str | None  # published digest; None where none is pinned

    @property
    def checkpoint_filename(self) -> str:
        return f"{self.name}.pt"


_SIZES = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}

# SHA-256 of Meta's released SAM 2.1 checkpoints (the files behind SAM21_BASE_URL).
_SAM21_SHA256 = {
    "tiny": "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
    "small": "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
    "base_plus": "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
    "large": "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
}


def _build() -> dict[str, Variant]:
    variants: dict[str, Variant] = {}
    for size, short in _SIZES.items():
        name = f"sam2.1_hiera_{size}"
        variants[name] = Variant(
            name=name,
            family="sam2.1",
            size=size,
            config=f"configs/sam2.1/sam2.1_hiera_{short}.yaml",
            url=f"{SAM21_BASE_URL}/{name}.pt",
            sha256=_SAM21_SHA256[size],
        )
        name = f"sam2_hiera_{size}"
        variants[name] = Variant(
            name=name,
            family="sam2",
            size=size,
            config=f"configs/sam2/sam2_hiera_{short}.yaml",
            url=f"{SAM2_BASE_URL}/{name}.pt",
            sha256=None,
        )
    return variants


VARIANTS: dict[str, Variant] = _build()
DEFAULT_VARIANT = "sam2.1_hiera_tiny"


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        known = ", ".join(sorted(VARIANTS))
        raise ValueError(f"unknown model {name!r}; known models: {known}") from None
