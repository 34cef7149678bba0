"""The sidebar on every page: the model picker, uploads, and the notices a session must see."""

from __future__ import annotations

import streamlit as st

from prunekit.app import computed
from prunekit.app.server_state import (
    defaults,
    eval_folder,
    folder_fits,
    folder_lab,
    folder_title,
    load_status,
    model_names,
    own_lab,
    service,
    start_loading,
    timm_zoo_names,
    zoo_names,
    zoo_names_without_timm,
)
from prunekit.app.session_state import bind, cfg, error_text, init_state
from prunekit.errors import PrunekitError
from prunekit.models import checkpoints, timm_zoo, zoo

UPLOAD_TYPES = ["safetensors", "pt", "pth", "bin", "ckpt", "ts"]
FOLDER_HELP = (
    "Images the person starting the server offered (`prunekit app --eval-folder DIR`): one sub-folder per class "
    "in sorted order, or ImageNet WNID folders (n01440764/...) for an ImageNet model. Accuracy, sensitivity and "
    "the data-driven criteria then use these images."
)

IMAGENETTE_HELP = (
    "Imagenette's 3,925 validation images (10 ImageNet classes, downloaded with `prunekit data imagenette`). "
    "Accuracy is over the model's 1000-way prediction, so a wrong class outside the ten counts as wrong."
)


def show_notices() -> None:
    for note in st.session_state.pop("notices", []):
        st.warning(note)
    st.session_state.notices = []
    svc = service()
    if svc.notice:  # e.g. the Ray cluster is gone and local workers took over
        st.error(svc.notice, icon="⚠️")
    if svc.store is not None and svc.store.notice:  # e.g. a damaged result store was set aside
        st.warning(svc.store.notice, icon="🗄️")


def sidebar() -> None:
    init_state()
    names = model_names() + list(st.session_state.user_labs)
    if cfg().model not in names:
        cfg().model = defaults().model
    _settle_model()
    with st.sidebar:
        st.markdown("### Model")
        timm = _timm_listed()
        shown = names if timm else _without_timm(names)
        bind(
            st.selectbox,
            "model",
            label="Pretrained CNN",
            options=shown,
            format_func=_model_labels(shown).__getitem__,  # one lookup per option: the picker lists ~90 (or ~1,650)
            help=(
                "Bundled Fashion-MNIST models load instantly and offline; torchvision and timm models (timm/...) "
                "are untrained, structure only, unless their weights are cached (torch hub, Hugging Face)."
            ),
        )
        _folder_choice()
        mode = "trusted mode: uploads may run code" if checkpoints.trusted_mode() else "safe mode"
        with st.expander(f"Upload your own weights ({mode})"):
            _upload(zoo_names() if timm else zoo_names_without_timm())


def _without_timm(names: list[str]) -> list[str]:
    """``names`` less timm's (a set lookup each: the picker's list is built on every rerun)."""
    timm = timm_zoo_names()
    return [n for n in names if n not in timm]


def _timm_listed() -> bool:
    """Whether the pickers list timm's models: on request, and always while one is open. Its ~1,550 names make
    a picker ~70 KB, which Streamlit sends again on every slider move; most sessions never need them."""
    count = len(timm_zoo_names())
    if not count:
        return False
    open_ = timm_zoo.is_timm(st.session_state.get("w_model", cfg().model))  # a pick this run counts
    if open_:
        st.session_state.w_timm = True  # before the toggle is drawn: a timm model is open, so its list stays
    return st.toggle(
        f"List timm's {count:,} models",
        key="w_timm",
        disabled=open_,
        help="timm's pretrained classifiers (timm/<name>), untrained and structure only unless their weights are "
        "in the Hugging Face cache. Left out of the picker until asked for: the list is long.",
    )


def _settle_model() -> None:
    """Start the zoo model asked for (a pick or a link) within the server's memory budget before the picker is
    drawn: one that does not fit is refused in its one sentence, and the default is shown instead; one that
    takes longer than a moment goes on loading apart while this page shows its progress (:func:`loading_panel`)."""
    st.session_state.loading = None
    wanted = st.session_state.get("w_model", cfg().model)
    if wanted in st.session_state.user_labs or wanted not in zoo_names():
        return
    try:
        st.session_state.loading = start_loading(wanted)
    except PrunekitError as exc:  # too large for the budget, or it cannot be built here
        st.session_state.notices.append(f"{error_text(exc)}. Showing {defaults().model} instead.")
        cfg().model = st.session_state["w_model"] = defaults().model


def loading_panel() -> bool:
    """In place of the page while the session's model loads apart: its progress, refreshed until it is ready
    (then the whole page runs again). True while it is shown."""
    status = st.session_state.get("loading")
    if status is None:
        return False
    st.subheader(f"Loading {status.name}")
    _load_progress(status.name)
    st.caption(
        "Every other session goes on meanwhile. Pick another model in the sidebar if you would rather not wait; "
        "this one goes on loading, and is ready when you come back to it."
    )
    return True


@st.fragment(run_every=1.0)
def _load_progress(name: str) -> None:
    status = load_status(name)
    if status is None:  # ready, or failed: the page runs again and shows the model, or says why it cannot
        st.rerun()
    st.progress(status.fraction, text=status.sentence())


def _folder_choice() -> None:
    """Offer the server's evaluation folder for a zoo model; say why when it does not fit the model."""
    folder, name = eval_folder(), cfg().model
    st.session_state.on_folder = None
    if folder is None or name in st.session_state.user_labs or name not in zoo_names() or not folder_fits(name):
        return
    title = folder_title()
    help_text = IMAGENETTE_HELP if title == "Imagenette" else FOLDER_HELP
    if not st.toggle(f"Evaluate on {title}", key="w_folder", help=help_text):
        return
    try:
        folder_lab(name)
    except PrunekitError as exc:
        st.warning(error_text(exc))
        return
    st.session_state.on_folder = name


def _model_labels(names: list[str]) -> dict[str, str]:
    """Each picker option's label: the name and where the model comes from."""
    mine, zoo_set = own_lab(), set(zoo_names())
    return {name: _model_label(name, mine.loaded.name if mine is not None else None, zoo_set) for name in names}


def _model_label(name: str, mine: str | None, zoo_set: set[str]) -> str:
    if name == mine:
        return f"{name} (your model)"
    if name in zoo.BUNDLED:
        return f"{name} (bundled, Fashion-MNIST)"
    if name in zoo.EFFICIENTNET:
        return f"{name} (ImageNet weights)"
    if name in zoo_set:
        return f"{name} (timm)" if timm_zoo.is_timm(name) else f"{name} (torchvision)"
    return f"{name} (your weights)"  # an upload, or a method's trained weights (no session state read here)


def _upload_mode() -> None:
    """Say plainly what the server accepts: the person who started it chose the mode."""
    if checkpoints.trusted_mode():
        st.warning(
            "**Trusted mode** (started with PRUNEKIT_TRUSTED_UPLOADS=1): whole pickled models and TorchScript are "
            "loaded too, and loading them runs code from the file. Upload only your own files."
        )
    else:
        st.caption(
            "Safe mode: safetensors files and state_dicts (read with `weights_only=True`); nothing in a file is run. "
            "Whole pickled models and TorchScript need the server started in trusted mode (`./dev app --trusted`)."
        )


def _upload(architectures: list[str]) -> None:
    _upload_mode()
    arch = st.selectbox(
        "Architecture (type to search)",
        architectures,
        key="upload_arch",
        help="The zoo model the weights belong to; its input size and evaluation data are used. timm's are listed "
        "once *List timm's models* is on.",
    )
    file = st.file_uploader(
        f"Weights (at most {checkpoints.max_upload_mb()} MB: {checkpoints.LIMIT_ENV} raises it)",
        type=UPLOAD_TYPES,
        key="upload_file",
    )
    if file is None or f"upload:{file.name}" in st.session_state.user_labs:
        return
    try:
        with st.spinner(f"Checking and loading {file.name}..."):
            computed.open_weights(file.getvalue(), arch, f"upload:{file.name}")
    except PrunekitError as exc:
        st.error(error_text(exc))
        return
    st.rerun()
