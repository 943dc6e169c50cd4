"""Label Studio labeling configs: the ``<Choices>`` that labels an ``<Image>``, read one way by the
service (the ML backend and the import) and by the client (`candor remote labelstudio-import`).
The standard library only: the client (which imports no ``app``) reads configs with it too."""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree import ElementTree


def show(name: str | None, limit: int = 60) -> str:
    """A name from the config, quoted for a message; unprintable characters as escapes."""
    text = name or ""
    body = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text[:limit])
    return f"'{body}{'…' if len(text) > limit else ''}'"


class LabelConfigError(ValueError):
    """A label config Candor cannot use; the message says why in plain words."""


@dataclass(frozen=True)
class LabelConfig:
    """What Candor needs of a Label Studio labeling config: the ``<Choices>`` control (its name,
    ``from_name`` in results, and its choices), the ``<Image>`` it labels (``to_name``) and the key
    of the task data that holds the image's URL (``$image`` -> ``image``)."""

    from_name: str
    to_name: str
    data_key: str
    choices: tuple[str, ...]


def _tag(element: ElementTree.Element) -> str:
    return element.tag.rsplit("}", 1)[-1].lower() if isinstance(element.tag, str) else ""


def parse_label_config(text: str) -> LabelConfig:
    """The first ``<Choices>`` that labels an ``<Image>``; LabelConfigError when there is none."""
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise LabelConfigError(f"the label config is not well-formed XML ({exc})") from exc
    images = {}
    for el in root.iter():
        if _tag(el) == "image" and el.get("name"):
            images[el.get("name")] = el.get("value", "")
    controls = [el for el in root.iter() if _tag(el) == "choices"]
    if not controls:
        raise LabelConfigError("the label config has no <Choices> control")
    for control in controls:
        targets = [t.strip() for t in (control.get("toName") or "").split(",") if t.strip()]
        image = next((t for t in targets if t in images), None)
        if image is None or not control.get("name"):
            continue
        value = images[image]
        if not value.startswith("$") or len(value) < 2:
            raise LabelConfigError(f"<Image name={show(image)}> takes no task field (its value should be like $image)")
        choices = [c.get("value") for c in control.iter() if _tag(c) == "choice"]
        if not choices or any(not c for c in choices):
            raise LabelConfigError(f"<Choices name={show(control.get('name'))}> has a <Choice> without a value")
        return LabelConfig(control.get("name"), image, value[1:], tuple(dict.fromkeys(choices)))
    raise LabelConfigError("no <Choices> control of the label config labels an <Image> (toName)")
