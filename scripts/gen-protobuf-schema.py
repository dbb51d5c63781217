#!/usr/bin/env python3
"""Generate crates/nanokube-api/src/protobuf_schema.tsv: the wire schema of the
Kubernetes protobuf messages (tag -> JSON field name and type) that the API server
needs to decode protobuf request bodies (kubectl sends them for `create namespace`,
`create configmap`, `create token`, `auth can-i`, ...).

Inputs, both from crates.io (`cargo info k8s-pb` and `cargo info k8s-openapi` put them
in ~/.cargo/registry/cache; this script unpacks them):
  - k8s-pb: prost structs generated from upstream's generated.proto (tags, wire types);
  - k8s-openapi: serde code generated from upstream's OpenAPI (exact JSON field names).

Also writes openapi_docs.tsv beside it: the Go doc comment of every message and field
(descriptions for OpenAPI and `kubectl explain`) and their +markers (patchMergeKey,
patchStrategy, listType, listMapKey), which become x-kubernetes-* extensions.

Output lines: message<TAB>tag<TAB>json_name<TAB>cardinality<TAB>type
  cardinality: one | rep | map (map<string, type>) | inline (embedded struct, flattened in JSON)
  type: string | bytes | int32 | int64 | bool | double | msg:<message path>
"""
import glob, os, re, sys, tarfile, tempfile

def unpack(name):
    crates = sorted(glob.glob(os.path.expanduser(f"~/.cargo/registry/cache/*/{name}-[0-9]*.crate")))
    if not crates:
        sys.exit(f"{name} is not in the cargo cache: run `cargo info {name}` first")
    d = tempfile.mkdtemp()
    with tarfile.open(crates[-1]) as t:
        t.extractall(d)
    return glob.glob(os.path.join(d, "*"))[0], os.path.basename(crates[-1])

pb, pb_name = unpack("k8s-pb")
oa, oa_name = unpack("k8s-openapi")
oa_root = sorted(glob.glob(os.path.join(oa, "src", "v1_*")), key=lambda p: int(p.rsplit("_", 1)[1]))[-1]

def snake(name):
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()

def norm(field):
    # k8s-pb and k8s-openapi split acronyms differently (non_resource_ur_ls vs
    # non_resource_urls); compare without underscores or case.
    return field.replace("_", "").lower()


def json_names(mod_path, struct):
    names = {}
    f = os.path.join(oa_root, *mod_path, snake(struct) + ".rs")
    if os.path.exists(f):
        for j, k in re.findall(r'"([^"]+)" => Field::Key_(\w+)', open(f).read()):
            names[norm(k)] = j
    return names

# Go JSON names with acronyms that a plain camelCase guess gets wrong, for messages
# k8s-openapi has no struct of their own to read them from.
GO_NAMES = {
    "downward_api": "downwardAPI",
    "scale_io": "scaleIO",
    "insecure_skip_tls_verify_backend": "insecureSkipTLSVerifyBackend",
    "node_id": "nodeID",
    "desired_api_version": "desiredAPIVersion",
    "host_pid": "hostPID",
    "host_ipc": "hostIPC",
    "host_ip": "hostIP",
    "carp_ip": "carpIP",
}

# Messages whose fields k8s-openapi inlines into another struct.
INLINED_INTO = {"VolumeSource": "Volume", "PersistentVolumeSource": "PersistentVolumeSpec"}


def camel(field):
    if field in GO_NAMES:
        return GO_NAMES[field]
    parts = field.split("_")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])

def resolve(mod_path, rust_path):
    """Resolve `super::super::x::Y` (relative to mod_path) to a dotted message path."""
    parts = rust_path.strip().split("::")
    base = list(mod_path)
    if parts[0] == "" or parts[0] == "crate":
        base, parts = [], parts[1:]
    while parts and parts[0] == "super":
        base.pop()
        parts = parts[1:]
    return ".".join(base + parts)

def strip_wrappers(t):
    t = re.sub(r",\s*>", ">", " ".join(t.split()))
    for w in ("::core::option::Option", "::prost::alloc::vec::Vec", "::prost::alloc::boxed::Box"):
        m = re.fullmatch(re.escape(w) + r"<(.*)>", t)
        if m:
            t = m.group(1).strip()
    return t

def fields(body):
    """(attribute, field name, type, doc lines) of each prost field in a struct body."""
    doc, attr, decl = [], None, []
    for line in body.splitlines():
        t = line.strip()
        if attr is None:
            if t.startswith("///"):
                doc.append(t[3:].strip())
            elif t.startswith("#[prost("):
                attr = t[len("#[prost("):t.rindex(")]")]
            continue
        decl.append(t)
        joined = " ".join(decl)
        if joined.count("<") == joined.count(">") and joined.endswith(","):
            m = re.match(r"pub (?:r#)?(\w+):\s*(.*),\s*$", joined)
            if m:
                yield attr, m.group(1), m.group(2), doc
            doc, attr, decl = [], None, []


def describe(doc):
    """A description and x-kubernetes markers from Go doc comment lines."""
    text, markers = [], {}
    for l in doc:
        if l.startswith("+"):
            k, _, v = l[1:].partition("=")
            markers[k] = v
        else:
            text.append(re.sub(r"<(https?://[^>]+)>", r"\1", l))
    # As upstream's OpenAPI generator: lines of a paragraph are joined with spaces,
    # paragraphs (blank comment lines) with a newline.
    paragraphs, cur = [], []
    for l in text:
        if l.strip():
            cur.append(l.strip())
        elif cur:
            paragraphs.append(" ".join(cur))
            cur = []
    if cur:
        paragraphs.append(" ".join(cur))
    return "\\n\\n".join(paragraphs).replace("\t", " ").strip(), markers
rows = []
guessed = []
docs = []
for f in sorted(glob.glob(os.path.join(pb, "src", "**", "mod.rs"), recursive=True)):
    rel = os.path.relpath(os.path.dirname(f), os.path.join(pb, "src")).split(os.sep)
    if rel[0] not in ("api", "apimachinery", "apiextensions_apiserver"):
        continue
    text = open(f).read()
    for m in re.finditer(r"((?:[ \t]*///[^\n]*\n)*)(?:#\[[^\n]*\]\n)*pub struct (\w+) \{\n(.*?)\n\}", text, re.S):
        sdoc, struct, body = m.group(1), m.group(2), m.group(3) + "\n"
        msg = ".".join(rel + [struct])
        docs.append((msg, "", describe([l.strip()[3:].strip() for l in sdoc.splitlines() if l.strip().startswith("///")])[0], {}))
        names = json_names(rel, struct) or json_names(rel, INLINED_INTO.get(struct, struct))
        for attr, field, ty, doc in fields(body):
            tag = re.search(r'tag = "(\d+)"', attr).group(1)
            desc, markers = describe(doc)
            jname = names.get(norm(field))
            if jname is None:
                jname = camel(field)
                guessed.append(f"{msg}.{field} -> {jname}")
            kind = re.match(r"\w+", attr.strip()).group(0)
            if kind.startswith("btree_map"):
                val = re.search(r'btree_map = "string, (\w+)"', attr).group(1)
                if val == "message":
                    inner = re.fullmatch(r".*BTreeMap<[^,]+,\s*(.*)>", " ".join(ty.split())).group(1)
                    val = "msg:" + resolve(rel, inner.rstrip().rstrip(",").strip())
                rows.append((msg, tag, jname, "map", val))
                docs.append((msg, jname, desc, markers))
            elif kind == "message":
                target = resolve(rel, strip_wrappers(ty))
                card = "rep" if "repeated" in attr else "one"
                # A Go embedded struct (`json:",inline"`) is a nested message on the wire
                # but flattened in JSON: k8s-openapi has no field of that name, and the
                # parent's JSON fields include the embedded struct's.
                if names and norm(field) not in names and card == "one":
                    card = "inline"
                    guessed.pop()
                rows.append((msg, tag, jname, card, "msg:" + target))
                docs.append((msg, jname, desc, markers))
            else:
                rows.append((msg, tag, jname, "rep" if "repeated" in attr else "one", kind))
                docs.append((msg, jname, desc, markers))

out = os.path.join(os.path.dirname(__file__), "..", "crates", "nanokube-api", "src", "protobuf_schema.tsv")
with open(out, "w") as w:
    w.write(f"# generated by scripts/gen-protobuf-schema.py from {pb_name} and {oa_name}; do not edit\n")
    for r in rows:
        w.write("\t".join(r) + "\n")
print(f"{len(rows)} fields from {len(set(r[0] for r in rows))} messages -> {os.path.normpath(out)}")
docs_out = os.path.join(os.path.dirname(out), "openapi_docs.tsv")
with open(docs_out, "w") as w:
    w.write(f"# generated by scripts/gen-protobuf-schema.py from {pb_name}; do not edit\n")
    w.write("# message<TAB>json field (empty: the message itself)<TAB>description (\\n for newlines)<TAB>markers (k=v;k=v)\n")
    for msg, field, desc, markers in docs:
        if not desc and not markers:
            continue
        w.write("\t".join([msg, field, desc, ";".join(f"{k}={v}" for k, v in markers.items())]) + "\n")
print(f"{len(docs)} descriptions -> {os.path.normpath(docs_out)}")
# Names not found in k8s-openapi were guessed (camelCase); list them so they get checked.
print(f"{len(guessed)} JSON names guessed (no k8s-openapi counterpart):")
for g in guessed:
    print("  " + g)
