"""The studio: a local web page (gradio) with sliders for pose, expression, lighting and identity on a snapshot.

Layout: the generated image, the rep(p) render and (optionally) rep(FR(image)) side by side; below, the latent
(z seed, truncation, noise mode), the face (a bank row by seed or index, identity only, a saved p, a photo) and the
sliders of generation.studio_state. Every handler is a plain function of the component values; gradio's queue
runs them one at a time on a worker thread (one G, no races) while the page stays live and shows a busy
indicator on the outputs. API endpoints (gradio_client): /edit, /load_face, /identity, /load_p, /photo, /save.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable

import torch

from generation import studio_state as st
from torch_utils.errors import UserError

INSTALL_HINT = 'the studio needs gradio: pip install -e ".[studio]"'
UPLOAD_PX = 110
DISPLAY_PX = 288  # on-screen size of the image panels (a 32 px smoke image is scaled up, pixelated)
# Fill the panel whatever the resolution; nearest-neighbour scaling keeps every pixel's exact colour on screen.
CSS = (".studio-image img { width: 100% !important; height: 100% !important; object-fit: contain; "
       "image-rendering: pixelated; }")


def default_outdir(network: str) -> str:
    """Where Save writes without --outdir: `studio/` in the snapshot's folder (created at the first Save)."""
    return os.path.join(os.path.dirname(network) or ".", "studio")


def import_gradio():
    """gradio, imported on first use (an optional extra); UserError with the install line when it is missing."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local tool: no usage reporting
    try:
        import gradio
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return gradio


class Handlers:
    """The page's callbacks as plain functions: (component values) -> (component values, status line).

    Slider values travel as one flat list in `st.Controls.as_list` order. A UserError never escapes: it becomes the
    status line and every other output keeps its value (`keep`), so bad input can only ever produce a message.
    """

    def __init__(self, studio: st.Studio, keep: object = None) -> None:
        self.studio, self.keep = studio, keep

    def _controls(self, values: tuple) -> st.Controls | None:
        return st.Controls.from_list(list(values)) if self.studio.conditional else None

    def _guard(self, fn: Callable, num_outputs: int) -> Callable:
        def run(*args):
            try:
                return fn(*args)
            except UserError as e:
                message = f"**Error:** {e}"
            except Exception as e:  # a bug, not the user's: keep the server up, show it, log the traceback
                traceback.print_exc()
                message = f"**Internal error:** {type(e).__name__}: {e}"
            return (*[self.keep] * (num_outputs - 1), message) if num_outputs > 1 else message

        return run

    def edit(self, face: st.Face, z_seed, psi, noise_mode, with_fr, *values) -> tuple:
        """-> (image, render, FR re-estimate, status): the face with the slider edits under z, psi and noise."""
        if z_seed is None:
            raise UserError("enter a z seed (a whole number >= 0)")
        start = time.perf_counter()
        view = self.studio.render(face, self._controls(values), z_seed, psi, noise_mode, bool(with_fr))
        ms = 1000 * (time.perf_counter() - start)
        latent = "the photo's latent" if face.ws is not None else f"z seed {view.z_seed}, psi {view.psi:g}"
        status = f"{face.label}; {latent}, noise {view.noise_mode}; updated in {ms:.0f} ms"
        if view.consistency is not None:
            status += f"; consistency mean (rep(FR(x)) - rep(p))^2 = {view.consistency:.4f}"
        return view.image, view.render, view.fr_render, status

    def load_face(self, source: str, index) -> tuple:
        """-> (face, *slider values, status): the whole p of a bank row; the sliders show its values."""
        face = self.studio.face_from_bank(source, _whole(index, source))
        return (face, *st.controls_from_p(face.p).as_list(), f"loaded {face.label}")

    def identity(self, face: st.Face, source: str, index, *values) -> tuple:
        """-> (face, status): identity and texture from a bank row; expression, pose, light and the current slider
        edits (folded into the face first) are kept."""
        face = st.Face(st.apply_controls(face.p, self._controls(values)), face.label, face.ws)
        face = self.studio.with_identity(face, source, _whole(index, source))
        return face, f"identity and texture from {source} {_whole(index, source)}"

    def load_p(self, path: str | None) -> tuple:
        """-> (face, *slider values, status): the face of an uploaded p (.npy)."""
        if not path:
            raise UserError("no file uploaded")
        face = self.studio.face_from_p_file(path)
        return (face, *st.controls_from_p(face.p).as_list(), f"loaded p from {face.label}")

    def photo(self, path: str | None) -> tuple:
        """-> (face, *slider values, status): the face of an uploaded photo (inversion, or FR's p)."""
        if not path:
            raise UserError("no photo uploaded")
        face = self.studio.face_from_photo(path)
        latent = "its own latent" if face.ws is not None else "p only (the latent is the z seed's)"
        return (face, *st.controls_from_p(face.p).as_list(), f"photo {face.label}: {latent}")

    def save(self, face: st.Face, z_seed, psi, noise_mode, with_fr, *values) -> str:
        """-> status: the current image, p and z (or ws) written to the output folder."""
        if z_seed is None:
            raise UserError("enter a z seed (a whole number >= 0)")
        view = self.studio.render(face, self._controls(values), z_seed, psi, noise_mode, False)
        paths = self.studio.save(view, face)
        return f"saved {', '.join(os.path.basename(p) for p in paths)} in {self.studio.outdir}"


def _whole(value, what: str) -> int:
    if value is None or float(value) != int(float(value)):
        raise UserError(f"the {what} must be a whole number, got {value!r}")
    return int(float(value))


def _slider_specs() -> list[tuple[str, tuple[float, float], float]]:
    """(label, range, step) of every slider, in `st.Controls.as_list` order."""
    specs = [("yaw (deg, + turns toward the image's right)", st.ANGLE_RANGES["yaw"], st.ANGLE_STEP),
             ("pitch (deg, + tilts down)", st.ANGLE_RANGES["pitch"], st.ANGLE_STEP),
             ("roll (deg, + counter-clockwise)", st.ANGLE_RANGES["roll"], st.ANGLE_STEP)]  # fmt: skip
    specs += [(f"expression {k}", st.EXP_RANGE, st.EXP_STEP) for k in range(st.NUM_EXP_SLIDERS)]
    specs += [("ambient light (SH band 0)", st.AMBIENT_RANGE, st.LIGHT_STEP),
              ("directional strength (|SH bands 1-3|)", st.STRENGTH_RANGE, st.LIGHT_STEP),
              ("light azimuth (deg, 0 = frontal, + from the right)", st.AZIMUTH_RANGE, st.LIGHT_ANGLE_STEP),
              ("light elevation (deg, + from above)", st.ELEVATION_RANGE, st.LIGHT_ANGLE_STEP)]  # fmt: skip
    return specs


def build_app(studio: st.Studio, psi: float = 1.0, noise_mode: str = "const", z_seed: int = 0,
              face_seed: int = 0):  # fmt: skip
    """The page (gr.Blocks) for studio, opened on the bank face of `face_seed` and z of `z_seed` (p and z of
    `generate.py images --seeds 0` by default)."""
    gr = import_gradio()
    handlers = Handlers(studio, keep=gr.skip())
    conditional = studio.conditional
    face = studio.face_from_bank("seed", face_seed) if conditional else st.Face(None, "unconditional")
    shown = st.controls_from_p(face.p) if conditional else None
    first = handlers.edit(face, z_seed, psi, noise_mode, False, *(shown.as_list() if shown else []))
    G = studio.G
    kind = "3DMM-conditional" if conditional else "unconditional"
    # Every update writes its PNGs to gradio's cache: drop files older than an hour, checked hourly.
    with gr.Blocks(title="taxfree3dmm studio", delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"### taxfree3dmm studio: `{studio.network}` ({G.img_resolution}px, {kind}, {G.num_ws} ws)")
        if not conditional:
            gr.Markdown("This snapshot is **unconditional** (a `--no-cond` run or an NVIDIA StyleGAN2 network): it "
                        "takes no 3DMM coefficients p, so there are no pose, expression, lighting or identity "
                        "controls; only z, truncation and noise can be edited.")  # fmt: skip
        face_state = gr.State(face)
        image_kw = dict(format="png", type="numpy", interactive=False, height=DISPLAY_PX, width=DISPLAY_PX,
                        elem_classes="studio-image")  # fmt: skip
        with gr.Row():
            image = gr.Image(first[0], label="generated image", **image_kw)
            render = gr.Image(first[1], label="rep(p) render", visible=conditional, **image_kw)
            fr_image = gr.Image(None, label="FR re-estimate: rep(FR(image))", visible=False, **image_kw)
        status = gr.Markdown(first[3])
        sliders = []
        with gr.Row():
            with gr.Column():
                gr.Markdown("**Latent**")
                z_box = gr.Number(z_seed, label="z seed", precision=0, minimum=0)
                psi_slider = gr.Slider(0.0, 1.5, psi, step=0.05, label="truncation psi")
                noise = gr.Radio(list(st.NOISE_MODES), value=noise_mode, label="noise mode")
                with_fr = gr.Checkbox(False, label="show the FR re-estimate", visible=studio.has_fr)
                save = gr.Button("Save image, p and z", variant="primary")
                if conditional:
                    gr.Markdown("**Face**")
                    with gr.Row():
                        source = gr.Radio(list(st.FACE_SOURCES), value="seed", label="face from")
                        index = gr.Number(face_seed, label="seed / dataset row", precision=0, minimum=0)
                    with gr.Row():
                        load = gr.Button("Load whole face")
                        take_id = gr.Button("Identity + texture only")
                    with gr.Row():
                        p_file = gr.File(label="Load a saved p (.npy)", type="filepath", height=UPLOAD_PX)
                        photo = gr.File(label="Photo (aligned square crop)", type="filepath", height=UPLOAD_PX,
                                        visible=studio.can_invert)  # fmt: skip
            if conditional:
                specs, values = _slider_specs(), shown.as_list()
                with gr.Column():
                    gr.Markdown("**Pose and light**")
                    for k in [0, 1, 2, *range(len(specs) - 4, len(specs))]:
                        label, (lo, hi), step = specs[k]
                        sliders.append((k, gr.Slider(lo, hi, values[k], step=step, label=label)))
                with gr.Column():
                    gr.Markdown(f"**Expression** (first {st.NUM_EXP_SLIDERS} coefficients)")
                    for k in range(3, 3 + st.NUM_EXP_SLIDERS):
                        label, (lo, hi), step = specs[k]
                        sliders.append((k, gr.Slider(lo, hi, values[k], step=step, label=label)))
            sliders = [s for _, s in sorted(sliders, key=lambda item: item[0])]

        edit_inputs = [face_state, z_box, psi_slider, noise, with_fr, *sliders]
        edit_outputs = [image, render, fr_image, status]
        edit_fn = handlers._guard(handlers.edit, len(edit_outputs))
        triggers = [z_box.input, psi_slider.input, noise.input, with_fr.input] + [s.input for s in sliders]
        gr.on(triggers, edit_fn, edit_inputs, edit_outputs, api_name="edit", trigger_mode="always_last",
              show_progress="minimal")  # fmt: skip
        with_fr.input(lambda on: gr.update(visible=bool(on)), with_fr, fr_image, queue=False, api_visibility="private")

        def then_edit(event) -> None:
            event.then(edit_fn, edit_inputs, edit_outputs, api_visibility="private", show_progress="minimal")

        if conditional:
            loaded = [face_state, *sliders, status]
            then_edit(load.click(handlers._guard(handlers.load_face, len(loaded)), [source, index], loaded,
                                 api_name="load_face"))  # fmt: skip
            then_edit(take_id.click(handlers._guard(handlers.identity, 2),
                                    [face_state, source, index, *sliders], [face_state, status],
                                    api_name="identity"))  # fmt: skip
            then_edit(p_file.upload(handlers._guard(handlers.load_p, len(loaded)), p_file, loaded, api_name="load_p"))
            then_edit(photo.upload(handlers._guard(handlers.photo, len(loaded)), photo, loaded, api_name="photo",
                                   show_progress="full"))  # fmt: skip
        save.click(handlers._guard(handlers.save, 1), edit_inputs, [status], api_name="save")
    return app


def serve(studio: st.Studio, host: str = "127.0.0.1", port: int = 7860, psi: float = 1.0,
          noise_mode: str = "const", block: bool = True, quiet: bool = False):  # fmt: skip
    """Build the page and serve it on host:port (127.0.0.1: this machine only); blocks unless block=False.

    Returns the running gr.Blocks (call .close() to stop it when block=False).
    """
    gr = import_gradio()
    app = build_app(studio, psi, noise_mode)
    app.queue(default_concurrency_limit=1)  # one G: requests run in turn, the page never blocks on them
    try:
        app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=quiet, show_error=True,
                   share=False, ssr_mode=False, css=CSS, theme=gr.themes.Default(), footer_links=["api"])  # fmt: skip
    except OSError as e:
        raise UserError(f"cannot serve on {host}:{port} ({e}); pick another --port") from e
    return app


def fr_factory(config: dict, recon_ckpt: str | None, device: torch.device,
               progress: bool = True) -> Callable[[], torch.nn.Module]:  # fmt: skip
    """Zero-argument factory of the frozen FR: recon_ckpt, else the snapshot's, else the built-in synthetic FR.

    Resolved and built on first use (the FR view or a photo), so the page opens without waiting for it; a missing
    checkpoint then shows as a message in the page.
    """

    def build() -> torch.nn.Module:
        from training.resolve import build_reconstructor, resolve_assets

        ckpt = resolve_assets(config, recon_ckpt=recon_ckpt, need_data=False, need_face=False, need_fr=True,
                              progress=progress).recon_ckpt  # fmt: skip
        return build_reconstructor(ckpt, device, config.get("recon_backbone"))

    return build
