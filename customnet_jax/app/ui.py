"""The page: gradio controls wired to `customnet_jax.app.session` (the same Pipeline as sample.py).

Left: the model folder, the object picture and its cut-out. Middle: the location canvas the model will see (click
two corners on it to draw the box; the four numbers stay in sync), the view (sliders, presets, multi-view sheet),
prompt or background (following the model), seed / steps / guidance. Right: the result, the sheet, the settings
JSON and a message line that shows any error. Local only: no analytics, no share link, no web fonts.
"""

# no `from __future__ import annotations`: gradio reads the handlers' annotations (gr.SelectData) at run time
import os
import tempfile
from typing import Any

from customnet_jax import matting
from customnet_jax.app import session
from customnet_jax.conditioning.images import to_uint8
from customnet_jax.diffusion import samplers

BOX_FIELDS = ("x0", "y0", "x1", "y1")
PREVIEW_SIDE = 256  # the location canvas is shown enlarged (nearest) to about this side; clicks map back
# small pictures shown large and sharp; the files stay at the model's resolution
CSS = ".picture img { object-fit: contain !important; width: 100%; height: 100%; image-rendering: pixelated; }"


def _enlargement(folder: str) -> int:
    return max(1, PREVIEW_SIDE // session.load_pipeline(folder).config.resolution)


def _request(folder, picture, matting_choice, segmenter, x0, y0, x1, y1, polar, azimuth, radius, prompt, background,
             seed, steps, guidance, sampler, sheet, sheet_views) -> session.Request:
    kind = session.model_kind(folder)
    bbox = None if kind == "zero123" else tuple(float(v) if v is not None else float("nan") for v in (x0, y0, x1, y1))
    if bbox is not None and all(float(v).is_integer() for v in bbox):
        bbox = tuple(int(v) for v in bbox)  # pixels, not fractions (conditioning.boxes.parse_bbox)
    return session.Request(folder=folder, picture=picture, matting=matting_choice, segmenter=segmenter, bbox=bbox,
                           polar=float(polar), azimuth=float(azimuth), radius=float(radius), prompt=prompt or "",
                           background=background if kind == "composition" else None, seed=int(seed),
                           steps=int(steps), guidance=float(guidance), sampler=sampler,
                           sheet_views=int(sheet_views) if sheet else 0)


def _error(error: Exception) -> str:
    return f"**Error:** {error}"


def build(folder: str = str(session.DEMO_FOLDER)) -> Any:
    """The gradio Blocks of the app (not launched)."""
    import gradio as gr  # gradio: an optional heavy dependency, only the app needs it

    size = session.load_pipeline(folder).config.resolution
    box = session.example_box(size)
    with gr.Blocks(title="CustomNet", analytics_enabled=False) as page:
        gr.Markdown("## CustomNet: place an object, choose its view and its background")
        corner = gr.State(None)
        with gr.Row():
            with gr.Column():
                folder_box = gr.Textbox(folder, label="model folder (default: the built-in demo model)",
                                        elem_id="folder")
                picture = gr.Image(label="object picture (empty: the built-in example)", type="numpy",
                                   image_mode="RGBA", sources=["upload"], elem_id="object")
                matting_choice = gr.Radio(list(matting.MATTINGS), value="auto", label="matting")
                segmenter = gr.Textbox("", label="SAM model folder (for sam; auto uses it when given)")
                cutout = gr.Image(label="cut-out (what the model is given)", interactive=False, format="png",
                                  elem_classes="picture", height=256)
            with gr.Column():
                canvas = gr.Image(label="location canvas: click two corners to draw the box", interactive=False,
                                  format="png", elem_id="canvas", height=PREVIEW_SIDE + 40)
                with gr.Row(visible=True) as box_row:
                    fields = [gr.Number(v, label=n, precision=0, elem_id=n)
                              for n, v in zip(BOX_FIELDS, box, strict=True)]
                polar = gr.Slider(*session.POLAR_RANGE, value=0, step=1, label="polar (degrees; < 0: from above)")
                azimuth = gr.Slider(*session.AZIMUTH_RANGE, value=0, step=1, label="azimuth (degrees)",
                                    elem_id="azimuth")
                radius = gr.Slider(*session.RADIUS_RANGE, value=0, step=0.05, label="radius")
                with gr.Row():
                    presets = {name: gr.Button(name, size="sm") for name in session.PRESETS}
                with gr.Row():
                    sheet = gr.Checkbox(False, label="multi-view sheet (azimuth -90..90, one seed)")
                    sheet_views = gr.Slider(2, 9, value=5, step=1, label="views in the sheet")
                prompt = gr.Textbox(session.example(size).caption, label="prompt", elem_id="prompt")
                background = gr.Image(label="background (composition model)", type="numpy", image_mode="RGB",
                                      sources=["upload"], visible=False)
                with gr.Row():
                    seed = gr.Number(0, label="seed", precision=0)
                    steps = gr.Slider(1, 100, value=25, step=1, label="steps", elem_id="steps")
                    guidance = gr.Slider(0, 10, value=3.0, step=0.5, label="guidance")
                    sampler = gr.Dropdown(list(samplers.names()), value=samplers.DEFAULT, label="sampler",
                                          elem_id="sampler")
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                message = gr.Markdown("", elem_id="message")
                result = gr.Image(label="result (first view)", interactive=False, format="png", elem_id="result",
                                  elem_classes="picture", height=256)
                sheet_image = gr.Image(label="all views (rows: views; first column: the location canvas)",
                                       interactive=False, format="png", elem_id="sheet", elem_classes="picture",
                                       height=256)
                settings = gr.File(label="settings JSON", elem_id="settings")
        inputs = [folder_box, picture, matting_choice, segmenter, *fields, polar, azimuth, radius, prompt, background,
                  seed, steps, guidance, sampler, sheet, sheet_views]
        _wire(gr, locals())
    return page


def _wire(gr: Any, c: dict) -> None:
    """The events: preview on every box / object change, corners from clicks, presets, model kind, generate."""
    fields, inputs = c["fields"], c["inputs"]

    def refresh(*values):
        try:
            request = _request(*values)
            picture, mask, _ = session.cut_out(request)
            prepared = session.load_pipeline(request.folder).prepare_object(picture, mask)
            k = _enlargement(request.folder)
            return session.preview(request).repeat(k, 0).repeat(k, 1), to_uint8(prepared), ""
        except (ValueError, OSError) as error:
            return gr.update(), gr.update(), _error(error)

    for control in (c["folder_box"], c["picture"], c["matting_choice"], c["segmenter"], *fields):
        control.change(refresh, inputs, [c["canvas"], c["cutout"], c["message"]])

    def click(pending: Any, folder: str, evt: gr.SelectData) -> tuple:
        x, y = (int(v) // _enlargement(folder) for v in evt.index)
        if pending is None:
            return (x, y), *(gr.update() for _ in fields)
        px, py = pending
        return None, min(px, x), min(py, y), max(px, x) + 1, max(py, y) + 1

    c["canvas"].select(click, [c["corner"], c["folder_box"]], [c["corner"], *fields])
    for name, button in c["presets"].items():
        button.click(lambda n=name: session.PRESETS[n], None, [c["polar"], c["azimuth"], c["radius"]])

    def follow_model(folder):
        try:
            kind = session.model_kind(folder)
        except (ValueError, OSError) as error:
            return gr.update(), gr.update(), gr.update(), _error(error)
        return (gr.update(visible=kind != "zero123"), gr.update(visible=kind == "prompt"),
                gr.update(visible=kind == "composition"), "")

    c["folder_box"].change(follow_model, [c["folder_box"]], [c["box_row"], c["prompt"], c["background"],
                                                              c["message"]])
    c["page"].load(follow_model, [c["folder_box"]], [c["box_row"], c["prompt"], c["background"], c["message"]])
    c["page"].load(refresh, inputs, [c["canvas"], c["cutout"], c["message"]])

    def run(*values, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - gradio's progress-bar idiom
        try:
            out = session.generate(_request(*values))
        except (ValueError, OSError) as error:
            return gr.update(), gr.update(), gr.update(), _error(error)
        path = session.settings_file(out["settings"], tempfile.mkdtemp(prefix="customnet-app-"))
        seconds = out["settings"]["seconds"]
        done = f"Done in {seconds:.1f} s (seed {out['settings']['seed']})"
        return out["images"][0, 0], out["sheet"], str(path), done

    c["generate"].click(run, inputs, [c["result"], c["sheet_image"], c["settings"], c["message"]])


def launch(page: Any, host: str = "127.0.0.1", port: int | None = None, block: bool = True) -> Any:
    """Serve the page locally (no share link, no analytics)."""
    import gradio as gr  # gradio: an optional heavy dependency, only the app needs it

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])  # no web-font fetch
    return page.queue().launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block,
                               show_error=True, quiet=True, theme=theme, css=CSS)

