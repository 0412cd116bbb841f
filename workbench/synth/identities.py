"""Fake but realistic identifiers: names, record numbers, dates, hospitals, accessions.

They are made up (no list of real patients or staff is involved), but shaped like what a
hospital PACS export holds, so that de-identification has real work to do: accented names,
site-style record numbers, birth dates, staff names, institution addresses, station names,
accession numbers. Each site draws from one locale; the sequence is deterministic for a
random generator.

Example::

    >>> import datetime as dt
    >>> import numpy as np
    >>> reg = SiteRegistry(0, np.random.default_rng(1))
    >>> p = reg.new_patient(np.random.default_rng(2), dt.date(2020, 5, 4))
    >>> "^" in p.name and p.sex in {"F", "M"}
    True
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class _Locale:
    family: tuple[str, ...]
    female: tuple[str, ...]
    male: tuple[str, ...]
    institution: str
    address: str
    mrn: str  # a prefix, then '#' for each digit
    accession: str  # '{year}' and '#' digits


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split("|"))


_LOCALES = (
    _Locale(
        family=_names(
            "Moreau|Lefèvre|Girard|Bonnet|Dupont|Lambert|Fontaine|Rousseau|Vincent|Muller|"
            "Faure|André|Mercier|Blanc|Guérin|Boyer|Garnier|Chevalier|François|Legrand"
        ),
        female=_names(
            "Claire|Hélène|Sophie|Isabelle|Nathalie|Françoise|Monique|Sylvie|Catherine|"
            "Brigitte|Élise|Martine"
        ),
        male=_names(
            "Jean|Philippe|Michel|Alain|Patrick|Jérôme|Bernard|François|Gérard|Thierry|"
            "Christophe|René"
        ),
        institution="Centre Hospitalier Universitaire de Valbrune",
        address="14 rue des Tilleuls, 49310 Valbrune, France",
        mrn="80#######",
        accession="A{year2}#######",
    ),
    _Locale(
        family=_names(
            "Müller|Schmidt|Schneider|Fischer|Weber|Meyer|Wagner|Becker|Schulz|Hoffmann|"
            "Schäfer|Koch|Bauer|Richter|Klein|Wolf|Schröder|Neumann|Schwarz|Zimmermann"
        ),
        female=_names(
            "Ursula|Monika|Petra|Sabine|Renate|Ute|Gisela|Birgit|Karin|Heike|Brigitte|Ingrid"
        ),
        male=_names(
            "Jürgen|Klaus|Wolfgang|Günter|Dieter|Horst|Uwe|Bernd|Rüdiger|Hans-Peter|Manfred|Jörg"
        ),
        institution="Klinikum Auental, Klinik für Radiologie",
        address="Lindenallee 7, 35287 Auental, Deutschland",
        mrn="00########",
        accession="{year4}######",
    ),
    _Locale(
        family=_names(
            "de Vries|Jansen|van den Berg|Bakker|Visser|Smit|Meijer|de Boer|Mulder|de Groot|"
            "Bos|Vos|Peters|Hendriks|van Leeuwen|Dekker|Brouwer|de Wit|Dijkstra|Smits"
        ),
        female=_names("Anneke|Marieke|Ingrid|Wilma|Joke|Hanneke|Els|Ria|Gerda|Tineke|Corrie|Anja"),
        male=_names(
            "Jan|Pieter|Hendrik|Willem|Cornelis|Gerrit|Johannes|Kees|Dirk|Bram|Joost|Sjoerd"
        ),
        institution="Ziekenhuis Westerveen",
        address="Dijkweg 212, 8391 KV Westerveen, Nederland",
        mrn="#######",
        accession="CT########",
    ),
    _Locale(
        family=_names(
            "Rossi|Russo|Ferrari|Esposito|Bianchi|Romano|Colombo|Ricci|Marino|Greco|Bruno|"
            "Gallo|Conti|De Luca|Mancini|Costa|Giordano|Rizzo|Lombardi|Moretti"
        ),
        female=_names(
            "Maria|Giuseppina|Anna|Rosa|Lucia|Franca|Paola|Carla|Giovanna|Antonella|Daniela|"
            "Nicoletta"
        ),
        male=_names(
            "Giuseppe|Giovanni|Antonio|Mario|Luigi|Francesco|Angelo|Vincenzo|Pietro|"
            "Salvatore|Niccolò|Carlo"
        ),
        institution="Azienda Ospedaliera San Teodoro di Valcasta",
        address="Via dei Mille 33, 27058 Valcasta (PV), Italia",
        mrn="A#######",
        accession="RX{year2}######",
    ),
    _Locale(
        family=_names(
            "García|Fernández|González|Rodríguez|López|Martínez|Sánchez|Pérez|Gómez|Martín|"
            "Jiménez|Ruiz|Hernández|Díaz|Moreno|Muñoz|Álvarez|Romero|Alonso|Gutiérrez"
        ),
        female=_names(
            "María José|Carmen|Pilar|Dolores|Mercedes|Rosario|Ángeles|Concepción|Teresa|"
            "Inmaculada|Josefa|Lourdes"
        ),
        male=_names(
            "José|Antonio|Manuel|Francisco|Juan|Jesús|Javier|Ángel|Miguel|Ramón|Andrés|Joaquín"
        ),
        institution="Hospital Universitario Virgen de la Sierra Alta",
        address="Avenida de los Almendros 58, 10617 Sierra Alta (Cáceres), España",
        mrn="H######",
        accession="{year4}CT#####",
    ),
    _Locale(
        family=_names(
            "Smith|Jones|Taylor|Brown|Williams|Wilson|Johnson|Davies|Robinson|Wright|"
            "Thompson|Evans|Walker|White|Roberts|Green|Hall|O'Brien|Wood|Clarke"
        ),
        female=_names(
            "Margaret|Susan|Patricia|Elizabeth|Linda|Janet|Carol|Christine|Gillian|Pauline|"
            "Maureen|Siobhan"
        ),
        male=_names(
            "David|John|Michael|Peter|Robert|Stephen|Christopher|Richard|Anthony|Graham|"
            "Keith|Seamus"
        ),
        institution="Ashcombe General Hospital NHS Trust",
        address="Infirmary Road, Ashcombe, AC4 7QP, United Kingdom",
        mrn="K#######",
        accession="RAG{year2}######",
    ),
)

_FIRST_STUDY = dt.date(2016, 1, 4)
_STUDY_SPAN_DAYS = 7 * 365


def _digits(pattern: str, rng: np.random.Generator) -> str:
    return "".join(str(int(rng.integers(10))) if c == "#" else c for c in pattern)


def _name(loc: _Locale, sex: str, rng: np.random.Generator) -> str:
    given = loc.female if sex == "F" else loc.male
    return f"{loc.family[rng.integers(len(loc.family))]}^{given[rng.integers(len(given))]}"


def _time(rng: np.random.Generator, earliest: int, latest: int) -> dt.time:
    seconds = int(rng.integers(earliest * 3600, latest * 3600))
    return dt.time(seconds // 3600, seconds // 60 % 60, seconds % 60)


@dataclass(frozen=True)
class PatientIdentity:
    """Who a participant is at the site (what de-identification must remove)."""

    name: str
    patient_id: str
    birth_date: dt.date
    sex: str

    def age(self, on: dt.date) -> str:
        """The DICOM PatientAge on a day, e.g. ``'067Y'``."""
        years = on.year - self.birth_date.year
        if (on.month, on.day) < (self.birth_date.month, self.birth_date.day):
            years -= 1
        return f"{years:03d}Y"


@dataclass(frozen=True)
class StudyIdentity:
    """When and under which numbers one study was acquired, and by whom."""

    date: dt.date
    time: dt.time
    accession: str
    study_id: str
    referring_physician: str
    operator: str


@dataclass(frozen=True)
class SiteIdentity:
    """What a site's headers say about the site itself."""

    institution: str
    address: str
    station: str
    device_serial: str


class SiteRegistry:
    """Hands out a site's patients and studies with unique record and accession numbers."""

    def __init__(self, index: int, rng: np.random.Generator) -> None:
        self._loc = _LOCALES[index % len(_LOCALES)]
        self.site = SiteIdentity(
            institution=self._loc.institution,
            address=self._loc.address,
            station=f"CT{index + 1:02d}{_digits('#####', rng)}",
            device_serial=_digits("######", rng),
        )
        self._staff = tuple(
            _name(self._loc, "F" if rng.random() < 0.5 else "M", rng) for _ in range(8)
        )
        self._patient_ids: set[str] = set()
        self._accessions: set[str] = set()
        self._study_counter = int(rng.integers(1000, 9000))

    def new_patient(self, rng: np.random.Generator, baseline: dt.date) -> PatientIdentity:
        """A new patient aged 55-79 on ``baseline``, with a record number new to the site."""
        sex = "F" if rng.random() < 0.5 else "M"
        patient_id = _digits(self._loc.mrn, rng)
        while patient_id in self._patient_ids:
            patient_id = _digits(self._loc.mrn, rng)
        self._patient_ids.add(patient_id)
        age_days = int(rng.integers(55 * 365, 80 * 365))
        return PatientIdentity(
            name=_name(self._loc, sex, rng),
            patient_id=patient_id,
            birth_date=baseline - dt.timedelta(days=age_days),
            sex=sex,
        )

    @staticmethod
    def baseline_date(rng: np.random.Generator) -> dt.date:
        """A plausible date for a participant's first screening CT."""
        return _FIRST_STUDY + dt.timedelta(days=int(rng.integers(_STUDY_SPAN_DAYS)))

    def new_study(self, rng: np.random.Generator, on: dt.date) -> StudyIdentity:
        """A study on day ``on``, with an accession number not yet used at this site."""
        pattern = self._loc.accession.format(year2=f"{on.year % 100:02d}", year4=on.year)
        accession = _digits(pattern, rng)
        while accession in self._accessions:
            accession = _digits(pattern, rng)
        self._accessions.add(accession)
        self._study_counter += int(rng.integers(1, 40))
        radiologists = self._staff[:4]
        technicians = self._staff[4:]
        return StudyIdentity(
            date=on,
            time=_time(rng, 7, 19),
            accession=accession,
            study_id=str(self._study_counter),
            referring_physician=radiologists[rng.integers(len(radiologists))] + "^^Dr.",
            operator=technicians[rng.integers(len(technicians))],
        )
