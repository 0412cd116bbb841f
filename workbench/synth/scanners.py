"""Scanner and protocol profiles that give each synthetic site its own acquisition style.

Sites take the profiles in turn (``site-01`` the first, ``site-07`` the first again with a
little more noise). A profile fixes what a site's headers and pixels look like: vendor, model,
reconstruction kernel, slice thickness, tube voltage, pixel spacing, noise, patient position,
slice order, pixel representation and how the series and study are described.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

SMALL_MATRIX = 96
FULL_MATRIX = 512
Z_EXTENT_MM = 240.0


@dataclass(frozen=True)
class ScannerProfile:
    """How one site acquires and reconstructs its chest CTs."""

    manufacturer: str
    model: str
    kernel: str
    thickness_small: float
    thickness_full: float
    kvp: float
    spacing_small: float
    noise_sd: float
    patient_position: str
    signed: bool
    series_number: int
    series_label: str
    study_description: str
    protocol: str
    software: str

    def thickness(self, full: bool) -> float:
        """Slice thickness (and spacing between slices) in mm."""
        return self.thickness_full if full else self.thickness_small

    def pixel_spacing(self, full: bool) -> float:
        """In-plane pixel spacing in mm: the same field of view at either matrix."""
        if not full:
            return self.spacing_small
        return round(self.spacing_small * SMALL_MATRIX / FULL_MATRIX, 4)

    def matrix(self, full: bool) -> int:
        """Rows and columns of each image."""
        return FULL_MATRIX if full else SMALL_MATRIX

    @property
    def ascending(self) -> bool:
        """Feet-first sites acquire caudo-cranially: the first file is the lowest slice."""
        return self.patient_position == "FFS"

    def series_description(self, full: bool) -> str:
        """The SeriesDescription, which names the thickness like a real protocol does."""
        text = f"{self.thickness(full):.2f}".rstrip("0")
        return self.series_label.format(t=text + "0" if text.endswith(".") else text)


_PROFILES = (
    ScannerProfile(
        manufacturer="SIEMENS",
        model="SOMATOM Definition AS+",
        kernel="B30f",
        thickness_small=3.0,
        thickness_full=1.0,
        kvp=120.0,
        spacing_small=3.6,
        noise_sd=16.0,
        patient_position="HFS",
        signed=False,
        series_number=2,
        series_label="Thorax {t} B30f",
        study_description="CT Thorax nativ",
        protocol="LungScreening_LD",
        software="syngo CT 2014A",
    ),
    ScannerProfile(
        manufacturer="GE MEDICAL SYSTEMS",
        model="LightSpeed VCT",
        kernel="STANDARD",
        thickness_small=3.75,
        thickness_full=1.25,
        kvp=120.0,
        spacing_small=3.68,
        noise_sd=20.0,
        patient_position="HFS",
        signed=True,
        series_number=3,
        series_label="CHEST {t}mm STND",
        study_description="CT CHEST W/O CONTRAST",
        protocol="5.1 LOW DOSE CHEST",
        software="LightSpeedverrel",
    ),
    ScannerProfile(
        manufacturer="PHILIPS",
        model="Brilliance 64",
        kernel="B",
        thickness_small=5.0,
        thickness_full=2.0,
        kvp=140.0,
        spacing_small=3.52,
        noise_sd=24.0,
        patient_position="FFS",
        signed=False,
        series_number=4,
        series_label="Thorax {t}mm B",
        study_description="CT THORAX",
        protocol="Thorax LD/Chest",
        software="3.5.5.17001",
    ),
    ScannerProfile(
        manufacturer="TOSHIBA",
        model="Aquilion ONE",
        kernel="FC13",
        thickness_small=4.0,
        thickness_full=1.0,
        kvp=100.0,
        spacing_small=3.64,
        noise_sd=18.0,
        patient_position="HFS",
        signed=True,
        series_number=5,
        series_label="Lung {t} FC13",
        study_description="CT Torace senza mdc",
        protocol="Torace LD",
        software="V6.00ER003",
    ),
    ScannerProfile(
        manufacturer="SIEMENS",
        model="SOMATOM Force",
        kernel="Br40d",
        thickness_small=3.0,
        thickness_full=1.0,
        kvp=110.0,
        spacing_small=3.56,
        noise_sd=14.0,
        patient_position="HFS",
        signed=False,
        series_number=2,
        series_label="Torax {t} Br40 3",
        study_description="TC TORAX SIN CONTRASTE",
        protocol="Torax_BajaDosis",
        software="syngo CT VA50A",
    ),
    ScannerProfile(
        manufacturer="GE MEDICAL SYSTEMS",
        model="Revolution CT",
        kernel="LUNG",
        thickness_small=5.0,
        thickness_full=1.25,
        kvp=120.0,
        spacing_small=3.72,
        noise_sd=26.0,
        patient_position="HFS",
        signed=True,
        series_number=3,
        series_label="Chest {t}mm Lung",
        study_description="CT CHEST LOW DOSE SCREENING",
        protocol="LDCT LUNG SCREEN",
        software="revo_ct_22mw.60",
    ),
)


def site_profile(index: int) -> ScannerProfile:
    """The profile of the site with zero-based ``index``.

    >>> site_profile(0).manufacturer, site_profile(6).manufacturer
    ('SIEMENS', 'SIEMENS')
    """
    base = _PROFILES[index % len(_PROFILES)]
    cycle = index // len(_PROFILES)
    if cycle == 0:
        return base
    return replace(base, noise_sd=base.noise_sd + 1.5 * cycle)
