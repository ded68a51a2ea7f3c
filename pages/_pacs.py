"""The hospital's PACS in the app, drawn only when one is configured (``XAI_PACS_URL`` or secrets ``[pacs]``).

* :func:`pacs_input` — "From PACS" beside the uploader: search (accession number, patient ID — asked only
  with patient details on —, study date range, modalities CR/DX by default), a study, its images with the
  PACS's thumbnails, and "Open": the film goes through the same loader as an upload.
* :func:`send_to_pacs` — "Send to PACS": the film's DICOM results (Secondary Captures, structured report,
  parametric maps), saying whether they carry patient identifiers; a refusal keeps them downloadable.

Each session makes its own client per action (nothing shared between sessions); every request has the
client's timeout, and every failure is one sentence on the page.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from pages._ingest import LoadedImage, current_image, load_bytes, set_image, set_load_error
from pages._state import page_store, patient_details_shown
from xai.pacs import DEFAULT_MODALITIES, PacsClient, PacsConfig, PacsError, pacs_config
from xai.radiograph import RadiographError

MODALITY_CHOICES = ("CR", "DX", "DR", "RG", "OT")
THUMBNAILS = 12  # thumbnails drawn per study (the rest are opened by number)


def configured() -> PacsConfig | None:
    """The PACS configuration, or None when none is set (or it is unusable: the error is shown once)."""
    secrets: dict[str, Any] = {}
    try:
        secrets = dict(st.secrets.get("pacs", {}))
    except Exception:  # noqa: BLE001 - no secrets file means no [pacs] table
        secrets = {}
    try:
        import os

        env = dict(os.environ)
        if secrets.get("url") and "XAI_PACS_URL" not in env:
            env["XAI_PACS_URL"] = str(secrets["url"])
        for key, name in (("username", "XAI_PACS_USER"), ("password", "XAI_PACS_PASSWORD"),
                          ("token", "XAI_PACS_TOKEN"), ("timeout_s", "XAI_PACS_TIMEOUT")):
            if secrets.get(key) and name not in env:
                env[name] = str(secrets[key])
        return pacs_config(env=env)
    except PacsError as exc:
        st.sidebar.error(f"PACS not available: {exc}")
        return None


def _study_label(study: Any, show_patient: bool) -> str:
    date = study.study_date
    date = f"{date[:4]}-{date[4:6]}-{date[6:]}" if len(date) == 8 else (date or "no date")
    parts = [date, study.description or "no description", "/".join(study.modalities) or "?",
             f"{study.n_instances if study.n_instances is not None else '?'} image(s)"]
    if show_patient:
        parts.insert(0, f"{study.patient_name or '—'} ({study.patient_id or 'no ID'})")
    return " · ".join(parts)


def pacs_input(container: Any) -> LoadedImage | None:
    """The "From PACS" expander in ``container`` when a PACS is configured; returns the session's image."""
    config = configured()
    if config is None:
        return None
    store = page_store("pacs")
    show_patient = patient_details_shown()
    with container, st.expander("From PACS", icon=":material/cloud_download:"):
        accession = st.text_input("Accession number", key="pacs_accession")
        patient_id = st.text_input("Patient ID", key="pacs_patient_id") if show_patient else ""
        dates = st.date_input("Study date", value=(), key="pacs_dates", format="YYYY-MM-DD",
                              help="A range (first and last day), or leave empty for any date.")
        modalities = st.multiselect("Modalities", MODALITY_CHOICES, default=list(DEFAULT_MODALITIES),
                                    key="pacs_modalities")
        if st.button("Search the PACS", key="pacs_search", icon=":material/search:"):
            store.clear()
            date_from, date_to = (tuple(dates) + (None, None))[:2] if isinstance(dates, tuple | list) else (dates, dates)
            try:
                with PacsClient(config) as client:
                    page = client.search_studies(accession_number=accession.strip() or None,
                                                 patient_id=(patient_id or "").strip() or None,
                                                 date_from=date_from, date_to=date_to or date_from,
                                                 modalities=modalities)
                store["studies"], store["more"] = list(page.items), page.more
            except PacsError as exc:
                st.error(str(exc))
        studies = store.get("studies")
        if studies is not None:
            _choose_and_open(config, store, studies, show_patient)
    return current_image()


def _choose_and_open(config: PacsConfig, store: dict, studies: list, show_patient: bool) -> None:
    if not studies:
        st.info("No study matches.")
        return
    if store.get("more"):
        st.caption(f"The first {len(studies)} studies; narrow the search to see others.")
    index = st.selectbox("Study", range(len(studies)), key="pacs_study",
                         format_func=lambda i: _study_label(studies[i], show_patient))
    study = studies[index]
    if store.get("study_uid") != study.study_uid:
        try:
            with PacsClient(config) as client:
                page = client.instances(study.study_uid)
                images = [i for i in page.items if i.is_image]
                skipped = len(page.items) - len(images)
                thumbs = []
                for instance in images[:THUMBNAILS]:
                    try:
                        thumbs.append(client.thumbnail(instance, side=160))
                    except PacsError:
                        thumbs.append(None)
        except PacsError as exc:
            st.error(str(exc))
            return
        store.update(study_uid=study.study_uid, images=images, thumbs=thumbs, skipped=skipped, more_images=page.more)
    images, thumbs = store["images"], store["thumbs"]
    if store["skipped"]:
        st.caption(f"{store['skipped']} instance(s) of this study are not images (reports, key objects): skipped.")
    if not images:
        st.info("This study holds no image.")
        return
    shown = [(n, t) for n, t in enumerate(thumbs) if t is not None]
    if shown:
        st.image([t for _, t in shown], caption=[f"image {n + 1}" for n, _ in shown], width=72)
    if store.get("more_images"):
        st.caption(f"The first {len(images)} images of this study.")
    number = st.selectbox("Image", range(len(images)), key="pacs_image", format_func=lambda n: f"image {n + 1}")
    if st.button("Open", key="pacs_open", icon=":material/open_in_new:"):
        try:
            with PacsClient(config) as client:
                data = client.retrieve(images[number])
            set_image(load_bytes(data, label=f"PACS image {number + 1}", source="upload"))
        except PacsError as exc:
            set_load_error(f"Could not open the PACS image: {exc}")
        except RadiographError as exc:
            set_load_error(f"Could not read the PACS image: {exc}")


def send_to_pacs(image: LoadedImage, make: Any) -> None:
    """A "Send to PACS" form for a DICOM film: ``make(mode, kinds) -> {kind: [file bytes]}`` builds the
    results; what will be sent and whether it carries patient identifiers is said before sending."""
    config = configured()
    if config is None or image.radiograph.format != "dicom":
        return
    with st.expander("Send to PACS", icon=":material/cloud_upload:"):
        mode = st.radio("Filed", ("deidentified", "pacs"), key="pacs_send_mode", horizontal=True,
                        format_func=lambda m: "in a new de-identified study" if m == "deidentified"
                        else "with the patient's study — carries patient identifiers")
        kinds = st.multiselect("Objects", ("sc", "sr", "pm"), default=["sc", "sr", "pm"], key="pacs_send_kinds",
                               format_func={"sc": "Secondary Captures (labelled overlays)",
                                            "sr": "Structured report (TID 1500)",
                                            "pm": "Parametric maps (float maps)"}.get)
        st.caption(f"To {config.server}. " + ("The objects carry the patient's name, ID and study."
                                               if mode == "pacs" else "No patient attribute or source UID."))
        if st.button("Send", key="pacs_send", icon=":material/send:", disabled=not kinds):
            objects = make(mode, tuple(kinds))
            files = [data for blobs in objects.values() for data in blobs]
            try:
                with PacsClient(config) as client:
                    client.store(files)
                st.success(f"Sent {len(files)} object(s) to {config.server}.")
                page_store("pacs").pop("unsent", None)
            except PacsError as exc:  # down, timeout, 401/403, or refused (StoreRefusedError)
                st.error(str(exc))
                _keep(image.sha256, files)
    sha, kept = page_store("pacs").get("unsent", (None, None))
    if kept and sha == image.sha256:
        st.download_button("Download the results not sent (zip)", data=kept, file_name="dicom_results.zip",
                           mime="application/zip", key="pacs_unsent", icon=":material/download:")


def _keep(sha256: str, files: list[bytes]) -> None:
    """Results a refused send leaves downloadable (zipped; names carry no identifier)."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for n, data in enumerate(files, start=1):
            archive.writestr(f"result_{n:02d}.dcm", data)
    page_store("pacs")["unsent"] = (sha256, buffer.getvalue())


def accessions_input() -> str:
    """Review page: a box for accession numbers whose films the session takes from the PACS ("" without one)."""
    if configured() is None:
        return ""
    return st.text_area("…and/or accession numbers from the PACS (one per line)", key="review_new_accessions",
                        help="Every CR/DX image of those studies, read from the PACS as uploads are.")


def films_for_accessions(text: str) -> list[tuple[str, bytes]]:
    """The image files of the studies with the accession numbers in ``text`` (names carry no header value);
    a PACS failure or an accession number that matches nothing raises ``ReviewError`` saying which."""
    from xai.pacs import iter_study_films, studies_for_accessions
    from xai.review import ReviewError

    accessions = [line.strip() for line in text.splitlines() if line.strip()]
    config = configured()
    if not accessions or config is None:
        return []
    skipped: list[str] = []
    try:
        with PacsClient(config) as client:
            uids, missing = studies_for_accessions(client, accessions)
            if missing:
                raise ReviewError(f"no CR/DX study in the PACS has accession number(s) {', '.join(missing)}")
            films = [(f"pacs_{name}", data) for name, data in iter_study_films(client, uids, warn=skipped.append)]
    except PacsError as exc:
        raise ReviewError(str(exc)) from None
    if not films:
        raise ReviewError("the PACS returned no image for those accession numbers" +
                          (f" ({skipped[0]})" if skipped else ""))
    return films


def page_results(image: LoadedImage, result: Any, model: Any, cmap: str, mode: str,
                 kinds: tuple[str, ...]) -> dict[str, list[bytes]]:
    """The Explain page's DICOM results of the film (``xai.dicom_results.film_results``) with the page's
    out-of-distribution check (cached) and the anatomical readout of the maps (the page's, cached: the lung model
    does not run again)."""
    from pages._explanations import ResultKey
    from pages._lungs import film_anatomy, readouts
    from pages._ood import ood_score
    from xai.dicom_results import film_results

    ood = None
    try:
        scored = ood_score(image.sha256, model.key, result, model)
        if scored.score is not None:
            ood = {"is_ood": scored.is_ood, "warnings": list(scored.warnings)}
    except (ValueError, RuntimeError):
        ood = None
    regions = film_anatomy(image.sha256, image.radiograph)
    evidence = {} if isinstance(regions, str) else {
        m: r.shares for m, r in readouts(ResultKey.of(image, model, result), result.maps, regions).items()}
    return film_results(result, model.loaded, image.dicom_bytes or b"", mode=mode, kinds=kinds, ood=ood,
                        evidence_by_region=evidence, colormap=cmap)
