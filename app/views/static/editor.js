// Polygon editor for multimask: several named masks (mask slots) per instance, drawn over an image.
// Runs as a gr.HTML js_on_load body: `element`, `props`, `server` and `watch` come from Gradio.
// All drawing happens here; Python is called only through `server.<fn>(...)` (load, save, copy, propose, assist).
// Coordinates are kept in ORIGINAL image pixels; zoom/pan is only the transform of the SVG world group.
(function () {
  'use strict';

  // ---- constants -------------------------------------------------------------------------------------------
  const SVGNS = 'http://www.w3.org/2000/svg';
  const SNAP_PX = 10;           // clicking this close to the first vertex closes the polygon
  const VERTEX_HIT_PX = 8;      // grab radius of a vertex handle
  const MID_HIT_PX = 7;         // grab radius of an edge-midpoint handle
  const EDGE_HIT_PX = 6;        // distance at which a click selects an outline
  const CLICK_SLOP_PX = 5;      // a press that moves less than this is a click, not a drag
  const DUP_PX = 3;             // a vertex this close to the previous one is a duplicate (double-click)
  const MIN_MID_EDGE_PX = 24;   // edges shorter than this on screen get no midpoint handle
  const MIN_SCALE = 0.01, MAX_SCALE = 64, UNDO_LIMIT = 300, LATENCY_LIMIT = 2000;
  const TIMEOUT_MS = { save_annotations: 60000, load_image: 30000, copy_previous: 30000, propose: 300000, assist: 30000 };
  // Tools: what a press on the image does. Polygon draws vertices; the assists ask the server for a polygon.
  const TOOLS = { polygon: 'Polygon', box: 'Box → object', lasso: 'Magnetic lasso', wand: 'Wand',
    sam: 'Segment-Anything' };
  const PART_NEXT_KEY = 'mm-editor-part-next';  // localStorage: after a first mask, go on to its second
  // Statuses, the instance id pattern, the palette and the mask slots' styles come in the editor document.

  const q = (sel) => element.querySelector(sel);
  const ui = {
    root: q('.mm-editor'), stage: q('.mm-stage'), svg: q('.mm-svg'), defs: q('.mm-defs'), world: q('.mm-world'),
    image: q('.mm-image'), shapes: q('.mm-shapes'), overlay: q('.mm-overlay'), draw: q('.mm-draw'),
    hint: q('.mm-hint'), mode: q('.mm-mode'), zoom: q('.mm-zoom'), toast: q('.mm-toast'), info: q('.mm-info'), legend: q('.mm-legend'),
    list: q('.mm-list'), warnings: q('.mm-warnings'), save: q('.mm-save'), reload: q('.mm-reload'),
    classSel: q('.mm-class'), done: q('.mm-done'), tolerance: q('.mm-tolerance'), partNext: q('.mm-part-next'),
  };
  const uid = Math.random().toString(36).slice(2, 8);  // keeps SVG pattern ids unique on the page

  // ---- state -----------------------------------------------------------------------------------------------
  const st = {
    doc: null,            // the loaded document, normalised, without its instances
    instances: [],        // [{id, class, masks: {name: [[[x, y], ...], ...]}}]: parts as lists of points
    status: 'unlabelled',
    active: -1,           // index of the active instance; -1: the next closed polygon starts a new instance
    fresh: false,         // the active instance is the one just drawn (not picked): a new first-mask polygon
                          // then starts the next instance instead of adding a part to it
    slot: 0,              // index of the active mask name
    sel: null,            // {inst, name, part, vertex}: the selected part (vertex -1) or vertex
    hidden: new Set(),    // ids of instances hidden in the view (not saved)
    drawing: null,        // [[x, y], ...]: the polygon being drawn (not part of the instances until closed)
    drawEls: null, cursor: null, polyEls: new Map(), handles: [], gesture: null,
    undo: [], redo: [],
    view: { s: 1, tx: 0, ty: 0, fitted: true },
    generation: 0,        // bumped at every document load: replies meant for an older one are dropped
    busy: {}, space: false, hover: false, leaveAnyway: false, warnings: [],
    tool: 'polygon',
    session: null,        // the assist being refined: {kind, instId, name, box | object | point, fg, bg, placed}
    lasso: null,          // the magnetic lasso's clicks: [{pt, path (null until the server's path arrives)}]
    carryId: null,        // id of the instance active when the previous image was left (kept by Copy previous)
  };
  // Assist requests: one in flight; a newer one replaces the queued one, and a reply that a newer request has
  // superseded is dropped.
  const assists = { token: 0, inflight: false, queued: null, working: 0, dropped: 0, seconds: [], placing: false };
  const saver = { revision: 0, inflight: false, pending: false, savedKey: '', blocked: false, error: '', waiters: [] };
  const latencies = [];

  // ---- small helpers ---------------------------------------------------------------------------------------
  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
  const finite = (v) => typeof v === 'number' && Number.isFinite(v);
  const round2 = (v) => Math.round(v * 100) / 100;
  const dist = (a, b) => Math.hypot(a.x - b.x, a.y - b.y);
  const rgb = (c, a) => (a === undefined ? `rgb(${c[0]},${c[1]},${c[2]})` : `rgba(${c[0]},${c[1]},${c[2]},${a})`);
  const names = () => (st.doc ? st.doc.mask_names : []);
  const colorOf = (i) => st.doc.palette[i % st.doc.palette.length];
  const partKey = (i, name, j) => `${i}|${name}|${j}`;
  const errorText = (reply) => (reply && typeof reply.error === 'string' && reply.error) || 'no reply';

  function make(el, attrs, parent, text) {
    for (const k in attrs) el.setAttribute(k, attrs[k]);
    if (text !== undefined) el.textContent = text;
    if (parent) parent.appendChild(el);
    return el;
  }
  const svgEl = (tag, attrs, parent) => make(document.createElementNS(SVGNS, tag), attrs, parent);
  const htmlEl = (tag, attrs, parent, text) => make(document.createElement(tag), attrs, parent, text);
  let toastTimer = 0;
  function toast(msg, ms) {
    ui.toast.textContent = msg;
    ui.toast.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { ui.toast.hidden = true; }, ms || 2500);
  }
  const focusEditor = () => ui.root.focus({ preventScroll: true });

  // A server function call that never throws: a missing function, an exception, a timeout or a reply that is
  // not an object all become {ok: false, error}.
  async function call(name, args) {
    const fn = server && server[name];
    if (typeof fn !== 'function') return { ok: false, error: `${name} is not available` };
    let timer = 0;
    try {
      const timeout = new Promise((resolve) => {
        timer = setTimeout(() => resolve({ ok: false, error: 'timed out' }), TIMEOUT_MS[name] || 30000);
      });
      const reply = await Promise.race([fn(...args), timeout]);
      return reply && typeof reply === 'object' ? reply : { ok: false, error: 'unexpected reply' };
    } catch (err) {
      return { ok: false, error: String((err && err.message) || err) };
    } finally {
      clearTimeout(timer);
    }
  }

  // ---- documents and instances -----------------------------------------------------------------------------
  function parseValue(v) {
    if (v && typeof v === 'object') return v;
    if (typeof v !== 'string' || !v.trim()) return null;
    try { return JSON.parse(v); } catch (err) { console.error('mm-editor: bad document', err); return null; }
  }

  function normaliseDoc(d) {
    if (!d || typeof d !== 'object' || d.image_id === undefined || d.image_id === null) return null;
    const w = Number(d.width), h = Number(d.height);
    if (!(w > 0 && h > 0 && Number.isFinite(w) && Number.isFinite(h))) return null;
    const strings = (v) => (Array.isArray(v) ? v.filter((x) => typeof x === 'string') : []);
    const palette = (Array.isArray(d.palette) ? d.palette : [])
      .filter((c) => Array.isArray(c) && c.length >= 3 && c.slice(0, 3).every(finite));
    const maskNames = strings(d.mask_names), statuses = strings(d.statuses);
    const styles = (Array.isArray(d.mask_styles) ? d.mask_styles : []).filter((m) => m && finite(m.fill));
    if (!palette.length || !maskNames.length || !statuses.length || !styles.length || typeof d.id_pattern !== 'string') {
      console.error('mm-editor: a document needs palette, mask_names, statuses, mask_styles and id_pattern');
      return null;
    }
    const int = (v) => (Number.isInteger(v) ? v : 0);
    return {
      dataset: String(d.dataset ?? ''), image_id: String(d.image_id), image_url: String(d.image_url || ''),
      file_name: typeof d.file_name === 'string' && d.file_name ? d.file_name : String(d.image_id),
      width: w, height: h, classes: strings(d.classes), mask_names: maskNames,
      rules: d.rules && typeof d.rules === 'object' ? d.rules : {}, revision: int(d.revision),
      status: statuses.includes(d.status) ? d.status : statuses[0], statuses, palette, mask_styles: styles,
      id_re: new RegExp('^(?:' + d.id_pattern + ')$'),
      position: int(d.position), count: int(d.count),
    };
  }

  const clampPt = (x, y) => [clamp(finite(x) ? x : 0, 0, st.doc.width), clamp(finite(y) ? y : 0, 0, st.doc.height)];

  // A polygon from a flat [x1, y1, ...] list (or [[x, y], ...]): finite, clamped, no repeated points; null if < 3.
  function importPart(raw) {
    if (!Array.isArray(raw)) return null;
    const pts = [];
    const push = (x, y) => {
      if (!finite(x) || !finite(y)) return;
      const p = clampPt(x, y), last = pts[pts.length - 1];
      if (!last || last[0] !== p[0] || last[1] !== p[1]) pts.push(p);
    };
    if (Array.isArray(raw[0])) raw.forEach((p) => Array.isArray(p) && push(p[0], p[1]));
    else for (let i = 0; i + 1 < raw.length; i += 2) push(raw[i], raw[i + 1]);
    if (pts.length > 1 && pts[0][0] === pts[pts.length - 1][0] && pts[0][1] === pts[pts.length - 1][1]) pts.pop();
    return pts.length >= 3 ? pts : null;
  }

  function newId(used) {
    let id;
    do { id = 'i' + Date.now().toString(36) + Math.random().toString(36).slice(2, 7); } while (used.has(id));
    return id;
  }
  const defaultClass = () => ui.classSel.value || st.doc.classes[0] || 'object';

  // Instances from a document or a reply. Ids are kept when valid and unused, else replaced; with `fixClasses`
  // a class the dataset does not know becomes the picker's class. Instances without any polygon are dropped.
  function importInstances(list, usedIds, fixClasses) {
    const used = new Set(usedIds), out = [];
    for (const raw of Array.isArray(list) ? list : []) {
      if (!raw || typeof raw !== 'object') continue;
      const id = typeof raw.id === 'string' && st.doc.id_re.test(raw.id) && !used.has(raw.id) ? raw.id : newId(used);
      used.add(id);
      let cls = typeof raw.class === 'string' ? raw.class : '';
      if (!cls || (fixClasses && st.doc.classes.length && !st.doc.classes.includes(cls))) cls = defaultClass();
      const masks = {}, rawMasks = raw.masks && typeof raw.masks === 'object' ? raw.masks : {};
      for (const n of names()) masks[n] = (Array.isArray(rawMasks[n]) ? rawMasks[n] : []).map(importPart).filter(Boolean);
      if (names().some((n) => masks[n].length)) out.push({ id, class: cls, masks });
    }
    return out;
  }

  // The instances as the document format wants them: flat lists, 2 decimals, every mask name present.
  const exportInstances = () => st.instances.map((inst) => ({
    id: inst.id, class: inst.class,
    masks: Object.fromEntries(names().map((n) => [n, (inst.masks[n] || []).map((part) => part.flatMap((p) => [round2(p[0]), round2(p[1])]))])),
  }));
  const savedContent = () => JSON.stringify([exportInstances(), st.status]);

  // ---- edits and undo: every completed edit is a snapshot on the undo stack --------------------------------
  const cloneInstances = (list) => list.map((inst) => ({
    id: inst.id, class: inst.class,
    masks: Object.fromEntries(Object.entries(inst.masks).map(([k, parts]) => [k, parts.map((pt) => pt.map((p) => [p[0], p[1]]))])),
  }));
  const snapshot = () => ({ instances: cloneInstances(st.instances), status: st.status, active: st.active, slot: st.slot,
    fresh: st.fresh });
  const contentKey = (s) => JSON.stringify([s.instances, s.status]);

  // Runs `mutate` as one undoable edit; returns whether anything changed.
  function edit(mutate) {
    const before = snapshot();
    mutate();
    return record(before);
  }

  // Records the change since `before` as one undoable edit, then redraws and autosaves.
  function record(before) {
    if (contentKey(before) === contentKey(st)) { validateSelection(); renderAll(); return false; }
    if (!assists.placing) st.session = null;  // another edit: clicks no longer refine the assist's result
    if (st.status === 'unlabelled' && st.instances.length) st.status = 'in_progress';
    if (st.status === 'in_progress' && !st.instances.length) st.status = 'unlabelled';
    st.undo.push(before);
    if (st.undo.length > UNDO_LIMIT) st.undo.shift();
    st.redo = [];
    changed();
    return true;
  }

  // Undo (from = st.undo) or redo (from = st.redo). While drawing, undo removes the last vertex instead.
  function step(from, to) {
    if (st.drawing) { if (from === st.undo) popVertex(); return; }
    const s = from.pop();
    if (!s) return;
    to.push(snapshot());
    st.session = null;
    st.instances = cloneInstances(s.instances);
    st.status = s.status;
    st.active = s.active < st.instances.length ? s.active : -1;
    st.slot = s.slot < names().length ? s.slot : 0;
    st.fresh = !!s.fresh;
    st.sel = null;
    changed();
  }
  const undo = () => step(st.undo, st.redo);
  const redo = () => step(st.redo, st.undo);

  function changed() {
    validateSelection();
    renderAll();
    scheduleSave();
  }

  function validateSelection() {
    if (st.active >= st.instances.length) st.active = -1;
    const s = st.sel, inst = s && st.instances[s.inst];
    const part = inst && (inst.masks[s.name] || [])[s.part];
    if (!part || s.vertex >= part.length) st.sel = null;
  }

  // ---- autosave: one save in flight; edits made meanwhile coalesce into one follow-up save of the latest state
  function scheduleSave() {
    if (!st.doc || saver.blocked) return;
    saver.pending = true;
    pumpSave();
  }

  async function pumpSave() {
    if (saver.inflight || !saver.pending || saver.blocked || !st.doc) return settleWaiters();
    saver.pending = false;
    const instances = exportInstances(), status = st.status, key = JSON.stringify([instances, status]);
    if (key === saver.savedKey) { saver.error = ''; setSaveState('saved'); return settleWaiters(); }
    const gen = st.generation, doc = st.doc;
    saver.inflight = true;
    setSaveState('saving');
    const reply = await call('save_annotations', [doc.dataset, doc.image_id, saver.revision, instances, status]);
    if (gen !== st.generation) return;  // another document was loaded meanwhile: its saves are not ours
    saver.inflight = false;
    if (reply.ok === true) {
      if (Number.isInteger(reply.revision)) saver.revision = reply.revision;
      saver.savedKey = key;
      saver.error = '';
      if (st.doc.statuses.includes(reply.status) && reply.status !== status && st.status === status) {
        st.status = reply.status;  // the store has the last word on the status
        saver.savedKey = JSON.stringify([instances, reply.status]);
      }
      st.warnings = Array.isArray(reply.warnings) ? reply.warnings.map(String) : [];
      if (savedContent() !== saver.savedKey) saver.pending = true;
      setSaveState(saver.pending ? 'saving' : 'saved');
      renderPanel();
      return saver.pending ? pumpSave() : settleWaiters();
    }
    if (reply.conflict) saver.blocked = true; else saver.error = errorText(reply);
    setSaveState(reply.conflict ? 'conflict' : 'failed');
    return settleWaiters();
  }

  function setSaveState(state) {
    const text = {
      idle: '', saved: 'saved', saving: 'saving…', failed: `save failed: ${saver.error} (click to retry)`,
      conflict: 'conflict: changed in another tab — reload',
    }[state];
    ui.save.dataset.state = state;
    ui.save.textContent = text;
    ui.save.title = state === 'saved' ? `revision ${saver.revision}` : text;
    ui.reload.hidden = state !== 'conflict';
  }

  const isSaved = () => !saver.inflight && !saver.pending && !saver.blocked && savedContent() === saver.savedKey;
  function settleWaiters() {
    if (!saver.inflight && !saver.pending) saver.waiters.splice(0).forEach((resolve) => resolve(isSaved()));
  }
  // Resolves once no save is running or queued: true if the current state is stored.
  const flushSaves = () => new Promise((resolve) => { saver.waiters.push(resolve); settleWaiters(); });

  // ---- loading ---------------------------------------------------------------------------------------------
  function loadDocument(raw) {
    const doc = normaliseDoc(raw);
    if (doc && st.doc && doc.dataset === st.doc.dataset && doc.image_id === st.doc.image_id
        && doc.revision < saver.revision) {
      console.warn('mm-editor: ignoring a stale document', doc.image_id, doc.revision, '<', saver.revision);
      return;
    }
    st.generation += 1;
    const left = st.instances[st.active];
    if (left && (!doc || !st.doc || doc.image_id !== st.doc.image_id)) st.carryId = left.id;
    Object.assign(st, { doc, drawing: null, gesture: null, undo: [], redo: [], active: -1, fresh: false, slot: 0,
      sel: null, warnings: [], leaveAnyway: false, instances: [], session: null, lasso: null });
    assists.queued = null;
    st.hidden.clear();
    Object.assign(saver, { revision: doc ? doc.revision : 0, inflight: false, pending: false, blocked: false, error: '' });
    if (doc) {
      fillClassPicker();
      st.instances = importInstances(raw.instances, [], false);
      st.status = doc.status;
      saver.savedKey = savedContent();
      ui.image.setAttribute('width', doc.width);
      ui.image.setAttribute('height', doc.height);
      ui.image.setAttribute('href', doc.image_url);
      fit();
    } else {
      ui.image.removeAttribute('href');
    }
    setSaveState(doc ? 'saved' : 'idle');
    renderAll();
    settleWaiters();
  }

  function fillClassPicker() {
    const keep = ui.classSel.value;
    ui.classSel.textContent = '';
    st.doc.classes.forEach((c) => htmlEl('option', { value: c }, ui.classSel, c));
    if (st.doc.classes.includes(keep)) ui.classSel.value = keep;
  }

  // Loads another image: direction "prev" | "next" | "next_unlabelled", or null for `imageId` (default: this
  // one again, a Reload). Pending saves go first; if they failed, a second press leaves anyway.
  async function navigate(direction, imageId) {
    if (!st.doc || st.busy.nav) return;
    if (st.drawing) closeOrCancelDrawing();
    st.busy.nav = true;
    renderPanel();
    const saved = await flushSaves();
    const reload = direction === null && (imageId === undefined || imageId === st.doc.image_id);
    if (!saved && !saver.blocked && !reload && !st.leaveAnyway) {
      st.busy.nav = false;
      st.leaveAnyway = true;
      toast(`Not saved: ${saver.error || 'pending changes'} — press again to leave anyway`, 5000);
      renderPanel();
      return;
    }
    const gen = st.generation, doc = st.doc;
    toast('Loading…', 30000);
    const reply = await call('load_image', [doc.dataset, direction === null && imageId ? imageId : doc.image_id,
      direction]);
    st.busy.nav = false;
    ui.toast.hidden = true;
    if (gen !== st.generation) return;
    if (reply.ok === false || !normaliseDoc(reply)) {
      toast(reply.ok === false ? errorText(reply) : 'bad document from load_image', 4000);
      renderPanel();
      return;
    }
    if (reload) saver.revision = -1;  // a reload takes the store's state, whatever its revision
    loadDocument(reply);
    try { props.value = JSON.stringify(reply); } catch (err) { console.error(err); }  // the value names the image
  }

  // Adds the instances that copy_previous or propose return, as one undoable edit. Saves go first: the server
  // leaves out objects the image already has.
  async function addFromServer(fnName, label) {
    if (!st.doc || st.busy[fnName]) return;
    const gen = st.generation, doc = st.doc;
    st.busy[fnName] = true;
    renderPanel();
    toast(`${label}…`, 60000);
    await flushSaves();
    const reply = gen === st.generation ? await call(fnName, [doc.dataset, doc.image_id]) : {};
    st.busy[fnName] = false;
    if (gen !== st.generation) return;
    renderPanel();
    if (reply.ok === false || !Array.isArray(reply.instances)) {
      toast(`${label} failed: ${reply.ok === false ? errorText(reply) : 'no instances in the reply'}`, 5000);
      return;
    }
    const notes = (Array.isArray(reply.notes) ? reply.notes.map(String) : []).map((n) => ` ${n}.`).join('');
    const added = importInstances(reply.instances, st.instances.map((i) => i.id), true);
    if (!added.length) { toast(`${label}: nothing to add.${notes}`, notes ? 6000 : 2500); return; }
    edit(() => { st.instances.push(...added); });
    const sources = reply.sources && typeof reply.sources === 'object' ? reply.sources : {};
    const kept = st.instances.findIndex((inst) => added.includes(inst) && st.carryId && sources[inst.id] === st.carryId);
    if (kept >= 0) { Object.assign(st, { active: kept, fresh: false, sel: null }); renderAll(); }
    toast(`${label}: ${added.length} instance(s) added — Ctrl+Z removes them.${notes}`, notes ? 8000 : 4000);
  }

  // ---- assists: the server proposes a polygon; it lands in the current mask slot as one undoable edit --------
  const flat = (parts) => parts.map((part) => part.flatMap((p) => [round2(p[0]), round2(p[1])]));
  const instIndex = (id) => st.instances.findIndex((inst) => inst.id === id);

  // Sends an assist request; `onReply` gets the reply unless the editor moved on to another image or a newer
  // request superseded it meanwhile.
  async function requestAssist(request, onReply) {
    if (!st.doc) return;
    assists.queued = { request, onReply, token: ++assists.token };
    if (assists.inflight) return;
    assists.inflight = true;
    while (assists.queued) {
      const job = assists.queued, gen = st.generation, doc = st.doc;
      assists.queued = null;
      setWorking(1);
      const reply = await call('assist', [doc.dataset, doc.image_id, job.request]);
      setWorking(-1);
      if (gen !== st.generation) continue;
      if (job.token !== assists.token) { assists.dropped += 1; continue; }
      if (finite(reply.seconds)) assists.seconds.push(reply.seconds);
      if (reply.ok === false) {
        const text = `${TOOLS[st.tool] || 'Assist'}: ${errorText(reply)}`;
        toast(text, Math.max(5000, text.length * 60));  // long enough to read what to install
        continue;
      }
      job.onReply(reply);
    }
    assists.inflight = false;
  }
  function setWorking(delta) {
    assists.working = Math.max(0, assists.working + delta);
    ui.stage.classList.toggle('mm-working', assists.working > 0);
    renderMode();
  }

  // The parts of a reply, as editor polygons; null (with a toast) when there are none.
  function replyParts(reply, what) {
    const parts = (Array.isArray(reply.parts) ? reply.parts : []).map(importPart).filter(Boolean);
    if (!parts.length) toast(`${what}: nothing found — click inside (include) or Shift+click (exclude) to guide it`, 5000);
    return parts.length ? parts : null;
  }

  // The primary (first mask) parts of instance i that a later mask must stay inside, per the dataset's rule.
  function withinFor(i, name) {
    const inst = st.instances[i];
    if (!inst || name === names()[0] || !st.doc.rules.secondary_inside_primary) return [];
    return flat(inst.masks[names()[0]] || []);
  }

  // Runs the refinable session (GrabCut in a box, or the part in its object) and puts its result in place of
  // the previous one.
  function runSession() {
    const s = st.session;
    if (!s) return;
    const i = instIndex(s.instId);
    const request = s.kind === 'part'
      ? { kind: 'part', object: s.object, foreground: s.fg, background: s.bg }
      : { kind: s.kind, box: s.box, outline: s.outline, point: s.point, tolerance: Number(ui.tolerance.value),
        foreground: s.fg, background: s.bg, within: withinFor(i, s.name) };
    renderOverlay();
    requestAssist(request, (reply) => {
      if (st.session !== s) return;  // ended meanwhile
      const parts = replyParts(reply, s.label);
      if (parts) placeSession(s, parts);
    });
  }

  // Puts a session's parts in: in place of its previous result if that is still there untouched, else added.
  function placeSession(s, parts) {
    assists.placing = true;
    try {
      edit(() => {
        const i = instIndex(s.instId), prev = s.placed, list = i >= 0 && st.instances[i].masks[s.name];
        if (prev && list && JSON.stringify(list.slice(prev.start, prev.start + prev.count)) === prev.key) {
          list.splice(prev.start, prev.count, ...parts);
          Object.assign(st, { active: i, sel: { inst: i, name: s.name, part: prev.start, vertex: -1 } });
          s.placed = { ...prev, count: parts.length };
        } else {
          s.placed = addParts(i, s.name, parts);
          s.instId = s.placed.instId;
        }
        s.placed.key = JSON.stringify(parts);
      });
    } finally {
      assists.placing = false;
    }
  }

  function startSession(kind, fields) {
    const target = targetInstance();
    st.session = { kind, instId: target >= 0 ? st.instances[target].id : null, name: names()[st.slot], fg: [],
      bg: [], placed: null, label: TOOLS[st.tool] || 'Assist', ...fields };
    runSession();
  }

  // A click while a session runs: include (plain) or exclude (Shift) the clicked place, then refine.
  function refineClick(e, pt) {
    const s = st.session;
    (e.shiftKey || e.altKey ? s.bg : s.fg).push([round2(pt[0]), round2(pt[1])]);
    runSession();
  }
  function endSession() {
    if (!st.session) return false;
    st.session = null;
    renderAll();
    return true;
  }

  // I: the second mask proposed inside the active instance's first mask.
  function partInObject() {
    if (st.drawing) closeOrCancelDrawing();
    const i = st.active, inst = st.instances[i], first = names()[0];
    if (names().length < 2) { toast('This dataset has one mask name: there is no part to propose'); return; }
    if (!inst || !(inst.masks[first] || []).length) {
      toast(`Pick an instance with a ${first} first (click its outline or its row)`, 4000);
      return;
    }
    const name = st.slot > 0 ? names()[st.slot] : names()[1];
    st.session = { kind: 'part', instId: inst.id, name, object: flat(inst.masks[first]), fg: [], bg: [],
      placed: null, label: `${name} in its ${first}`, anyTool: true };
    runSession();
  }

  // G: the selected part, a rough outline, snapped to the object around it (GrabCut); clicks then refine it.
  function snapSelected() {
    if (st.drawing) closeOrCancelDrawing();
    const s = st.sel, inst = s && st.instances[s.inst];
    if (!inst) { toast('Select an outline first (click it), then press G'); return; }
    const part = inst.masks[s.name][s.part];
    st.session = { kind: 'grabcut', instId: inst.id, name: s.name, outline: flat([part]), fg: [], bg: [],
      placed: { start: s.part, count: 1, key: JSON.stringify([part]) }, label: `${s.name} snapped to the image`,
      anyTool: true };
    runSession();
  }

  // C: the active instance's later masks clipped to its first mask, as one edit.
  function clipToObject() {
    const i = st.active, inst = st.instances[i], first = names()[0];
    if (!inst) { toast('Pick an instance first'); return; }
    const object = flat(inst.masks[first] || []);
    if (!object.length) { toast(`#${i + 1} has no ${first} to clip to`); return; }
    const later = names().slice(1).filter((n) => (inst.masks[n] || []).length);
    if (!later.length) { toast(`#${i + 1} has nothing but its ${first}`); return; }
    const id = inst.id, before = JSON.stringify(later.map((n) => flat(inst.masks[n])));
    Promise.all(later.map((n) => new Promise((resolve) => {
      const doc = st.doc;
      setWorking(1);
      call('assist', [doc.dataset, doc.image_id, { kind: 'clip', part: flat(inst.masks[n]), object }])
        .then((reply) => { setWorking(-1); resolve(reply); });
    }))).then((replies) => {
      const k = instIndex(id), now = st.instances[k];
      if (!now || JSON.stringify(later.map((n) => flat(now.masks[n]))) !== before) return;  // edited meanwhile
      const bad = replies.find((r) => r.ok === false);
      if (bad) { toast(`Clip: ${errorText(bad)}`, 5000); return; }
      const clipped = replies.map((r) => (Array.isArray(r.parts) ? r.parts : []).map(importPart).filter(Boolean));
      if (JSON.stringify(clipped.map(flat)) === before) { toast(`#${k + 1}: already inside its ${first}`); return; }
      edit(() => { later.forEach((n, j) => { now.masks[n] = clipped[j]; }); st.active = k; st.sel = null; });
      toast(`#${k + 1} clipped to its ${first} — Ctrl+Z restores it`, 4000);
    });
  }

  // The magnetic lasso: clicks as for a polygon; between two clicks the server traces the image's edges.
  function lassoClick(p) {
    const pt = clampPt(...toImage(p)), L = st.lasso;
    st.cursor = p;
    if (!L) { st.lasso = [{ pt, path: [] }]; st.sel = null; syncLasso(); return; }
    if (L.length >= 2 && dist(toScreen(L[0].pt), p) <= SNAP_PX) { closeLasso(); return; }
    if (dist(toScreen(L[L.length - 1].pt), p) < DUP_PX) return;
    lassoSegment(pt);
  }
  function lassoSegment(pt) {
    const L = st.lasso, from = L[L.length - 1].pt, item = { pt, path: null }, gen = st.generation, doc = st.doc;
    L.push(item);
    syncLasso();
    setWorking(1);
    item.pending = call('assist', [doc.dataset, doc.image_id, { kind: 'lasso', start: from, end: pt }]).then((reply) => {
      setWorking(-1);
      if (gen !== st.generation || st.lasso !== L || !L.includes(item)) return;
      if (reply.ok === false || !Array.isArray(reply.points)) { toast(`Lasso: ${errorText(reply)}`, 4000); item.path = [pt]; }
      else item.path = reply.points.filter((q) => Array.isArray(q) && finite(q[0]) && finite(q[1])).map((q) => clampPt(q[0], q[1]));
      syncLasso();
    });
  }
  function syncLasso() {
    st.drawing = st.lasso ? st.lasso.flatMap((it, k) => (k === 0 ? [it.pt] : it.path || [it.pt])) : null;
    renderOverlay();
    renderDraw();
    renderPanel();
  }
  // Closes the lasso along the edges back to its first click, once every path has arrived.
  async function closeLasso() {
    const L = st.lasso;
    if (!L || L.length < 2) { toast('The lasso needs at least 2 clicks before it closes'); return; }
    lassoSegment(L[0].pt);
    await Promise.all(L.map((it) => it.pending));
    if (st.lasso !== L) return;
    const pts = st.drawing.slice(0, -1);  // the last point is the first one again
    st.drawing = pts;
    closeDrawing();
  }

  function setTool(tool) {
    if (!TOOLS[tool]) return;
    if (st.drawing) closeOrCancelDrawing();
    st.tool = tool;
    st.session = null;
    renderAll();
    focusEditor();
  }

  // ---- view: zoom and pan ----------------------------------------------------------------------------------
  function local(e) {
    const r = ui.svg.getBoundingClientRect();
    return { x: e.clientX - r.left, y: e.clientY - r.top };
  }
  const toImage = (p) => [(p.x - st.view.tx) / st.view.s, (p.y - st.view.ty) / st.view.s];
  const toScreen = (pt) => ({ x: pt[0] * st.view.s + st.view.tx, y: pt[1] * st.view.s + st.view.ty });

  function fit() {
    if (!st.doc) return;
    const r = ui.svg.getBoundingClientRect();
    st.view.fitted = true;
    if (r.width < 2 || r.height < 2) return;  // not laid out (e.g. a hidden tab): the resize observer fits later
    const s = clamp(Math.min(r.width / st.doc.width, r.height / st.doc.height), MIN_SCALE, MAX_SCALE);
    Object.assign(st.view, { s, tx: (r.width - st.doc.width * s) / 2, ty: (r.height - st.doc.height * s) / 2 });
    applyView();
  }

  function zoomAt(p, factor) {
    const s = clamp(st.view.s * factor, MIN_SCALE, MAX_SCALE), f = s / st.view.s;
    Object.assign(st.view, { s, tx: p.x - (p.x - st.view.tx) * f, ty: p.y - (p.y - st.view.ty) * f, fitted: false });
    applyView();
  }

  function applyView() {
    const v = st.view, sp = 8 / v.s;  // hatch spacing: 8 screen px at any zoom
    ui.world.setAttribute('transform', `matrix(${v.s} 0 0 ${v.s} ${v.tx} ${v.ty})`);
    ui.defs.querySelectorAll('pattern').forEach((p) => {
      p.setAttribute('width', sp);
      p.setAttribute('height', sp);
      p.firstChild.setAttribute('y2', sp);
      p.firstChild.setAttribute('stroke-width', sp / 3);
    });
    ui.zoom.textContent = `${Math.round(v.s * 100)}%`;
    renderOverlay();
    renderDraw();
  }

  // ---- rendering -------------------------------------------------------------------------------------------
  let dragFrame = false;
  function requestDragRender() {  // during a drag: one redraw per frame, of the dragged polygon and the handles
    if (dragFrame) return;
    dragFrame = true;
    requestAnimationFrame(() => {
      dragFrame = false;
      const s = st.sel, el = s && st.polyEls.get(partKey(s.inst, s.name, s.part));
      if (el) el.setAttribute('points', pointsAttr(st.instances[s.inst].masks[s.name][s.part])); else renderShapes();
      renderOverlay();
    });
  }

  function renderAll() {
    ui.hint.hidden = !!st.doc;
    ui.svg.style.visibility = st.doc ? 'visible' : 'hidden';
    renderShapes();
    renderOverlay();
    renderDraw();
    renderPanel();
  }

  function hatchId(i) {
    const id = `mmh-${uid}-${i}`;
    if (!ui.defs.querySelector('#' + id)) {
      const sp = 8 / st.view.s;
      const p = svgEl('pattern', { id, patternUnits: 'userSpaceOnUse', width: sp, height: sp, patternTransform: 'rotate(45)' }, ui.defs);
      svgEl('line', { x1: 0, y1: 0, x2: 0, y2: sp, stroke: rgb(colorOf(i)), 'stroke-width': sp / 3 }, p);
    }
    return id;
  }

  // Fill and stroke of mask slot k, by the document's mask_styles (the prediction overlay's): filled, hatched,
  // dashed, dotted.
  function styleSlot(el, k, i) {
    const styles = st.doc.mask_styles, m = styles[Math.min(k, styles.length - 1)], c = colorOf(i);
    el.setAttribute('stroke', rgb(c));
    el.setAttribute('fill', m.hatch ? `url(#${hatchId(i)})` : m.fill > 0 ? rgb(c, m.fill) : 'none');
    if (m.dash) el.setAttribute('stroke-dasharray', m.dash);
  }

  const pointsAttr = (part) => part.map((p) => `${p[0]},${p[1]}`).join(' ');

  // World layer (image pixels): every visible polygon, the active instance last (on top).
  function renderShapes() {
    ui.shapes.textContent = '';
    ui.defs.textContent = '';
    st.polyEls.clear();
    if (!st.doc) return;
    const order = st.instances.map((_, i) => i).filter((i) => i !== st.active);
    if (st.active >= 0) order.push(st.active);
    for (const i of order) {
      const inst = st.instances[i];
      if (st.hidden.has(inst.id)) continue;
      const g = svgEl('g', { 'data-inst': i }, ui.shapes);
      names().forEach((name, k) => (inst.masks[name] || []).forEach((part, j) => {
        const el = svgEl('polygon', { points: pointsAttr(part), class: `mm-poly mm-slot-${k}` }, g);
        styleSlot(el, k, i);
        el.classList.toggle('mm-active-inst', i === st.active);
        const s = st.sel;
        el.classList.toggle('mm-selected', !!s && s.inst === i && s.name === name && s.part === j);
        st.polyEls.set(partKey(i, name, j), el);
      }));
    }
  }

  function bboxOf(inst) {
    let x0 = Infinity, y0 = Infinity;
    for (const name in inst.masks) for (const part of inst.masks[name]) for (const p of part) { x0 = Math.min(x0, p[0]); y0 = Math.min(y0, p[1]); }
    return x0 < Infinity ? [x0, y0] : null;
  }

  // Screen layer: instance labels, and the active instance's vertex and midpoint handles (kept for hit tests).
  function renderOverlay() {
    ui.overlay.textContent = '';
    st.handles = [];
    if (!st.doc) return;
    st.instances.forEach((inst, i) => {
      const b = !st.hidden.has(inst.id) && bboxOf(inst);
      if (!b) return;
      const p = toScreen(b), c = colorOf(i).map((v) => Math.round(v * 0.55));
      svgEl('text', { x: p.x + 2, y: Math.max(p.y - 4, 12), class: 'mm-label', fill: rgb(c) }, ui.overlay)
        .textContent = `${inst.class} #${i + 1}`;
    });
    renderSession();
    const inst = st.instances[st.active];
    if (st.drawing || !inst || st.hidden.has(inst.id)) return;
    const c = rgb(colorOf(st.active)), mids = [], verts = [], s = st.sel;
    for (const name of names()) {
      (inst.masks[name] || []).forEach((part, j) => part.forEach((pt, v) => {
        const a = toScreen(pt), b = toScreen(part[(v + 1) % part.length]), h = { inst: st.active, name, part: j, idx: v };
        verts.push({ ...h, type: 'v', x: a.x, y: a.y });
        if (dist(a, b) >= MIN_MID_EDGE_PX) mids.push({ ...h, type: 'm', x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 });
      }));
    }
    mids.forEach((h) => svgEl('circle', { cx: h.x, cy: h.y, r: 3, class: 'mm-mid', stroke: c }, ui.overlay));
    verts.forEach((h) => {
      const on = !!s && s.inst === h.inst && s.name === h.name && s.part === h.part && s.vertex === h.idx;
      svgEl('circle', { cx: h.x, cy: h.y, r: on ? 6 : 4, class: on ? 'mm-vertex mm-sel' : 'mm-vertex', stroke: c }, ui.overlay);
    });
    st.handles = verts.concat(mids);  // vertices first: they win over midpoints
  }

  // The running assist: its box and its include (+) / exclude (-) clicks.
  function renderSession() {
    const s = st.session;
    if (!s) return;
    if (s.box) {
      const a = toScreen(s.box.slice(0, 2)), b = toScreen(s.box.slice(2));
      svgEl('rect', { x: a.x, y: a.y, width: b.x - a.x, height: b.y - a.y, class: 'mm-box mm-box-set' }, ui.overlay);
    }
    [[s.fg, 'mm-click-in', '+'], [s.bg, 'mm-click-out', '−']].forEach(([pts, cls, sign]) => pts.forEach((pt) => {
      const c = toScreen(pt);
      svgEl('circle', { cx: c.x, cy: c.y, r: 7, class: cls }, ui.overlay);
      svgEl('text', { x: c.x, y: c.y + 4, class: 'mm-click-sign' }, ui.overlay).textContent = sign;
    }));
  }

  // The polygon being drawn, in screen space.
  function renderDraw() {
    ui.draw.textContent = '';
    st.drawEls = null;
    if (st.boxDrag) {
      const [a, b] = st.boxDrag;
      svgEl('rect', { x: Math.min(a.x, b.x), y: Math.min(a.y, b.y), width: Math.abs(b.x - a.x),
        height: Math.abs(b.y - a.y), class: 'mm-box' }, ui.draw);
    }
    if (!st.drawing || !st.doc) return;
    st.drawEls = { line: svgEl('polyline', { class: 'mm-draw-line' }, ui.draw),
      rubber: svgEl('line', { class: 'mm-draw-rubber' }, ui.draw), dots: svgEl('g', {}, ui.draw) };
    st.drawing.forEach(addDrawDot);
    st.drawEls.line.setAttribute('points', st.drawing.map((pt) => { const p = toScreen(pt); return `${p.x},${p.y}`; }).join(' '));
    updateRubber();
  }
  function addDrawDot(pt, i) {
    const p = toScreen(pt);
    svgEl('circle', { cx: p.x, cy: p.y, r: i ? 4 : 6, class: i ? 'mm-draw-vertex' : 'mm-draw-first' }, st.drawEls.dots);
  }
  // The fast path after a click: add one vertex to the drawing, redraw nothing else.
  function appendDrawVertex() {
    if (!st.drawEls) { renderDraw(); return; }
    const n = st.drawing.length, p = toScreen(st.drawing[n - 1]);
    st.drawEls.line.setAttribute('points', `${st.drawEls.line.getAttribute('points') || ''} ${p.x},${p.y}`);
    addDrawDot(st.drawing[n - 1], n - 1);
    updateRubber();
  }
  function updateRubber() {
    const els = st.drawEls;
    if (!els || !st.drawing.length) return;
    const a = toScreen(st.drawing[st.drawing.length - 1]), b = st.cursor || a;
    Object.entries({ x1: a.x, y1: a.y, x2: b.x, y2: b.y }).forEach(([k, v]) => els.rubber.setAttribute(k, v));
    const snap = st.drawing.length >= 3 && !!st.cursor && dist(toScreen(st.drawing[0]), st.cursor) <= SNAP_PX;
    els.dots.firstChild.classList.toggle('mm-snap', snap);
  }

  function renderPanel() {
    const doc = st.doc, nav = ['prev', 'next', 'next_unlabelled'];
    ui.root.querySelectorAll('.mm-toolbar button').forEach((b) => {
      const act = b.dataset.act;
      b.disabled = !doc || (act === 'undo' && !st.undo.length && !st.drawing) || (act === 'redo' && !st.redo.length)
        || (act === 'copy' && !!st.busy.copy_previous) || (act === 'propose' && !!st.busy.propose)
        || (nav.includes(act) && !!st.busy.nav);
      if (b.dataset.tool) b.classList.toggle('mm-tool-on', b.dataset.tool === st.tool);
    });
    ui.tolerance.disabled = !doc;
    ui.classSel.disabled = !doc;
    ui.done.classList.toggle('mm-on', !!doc && st.status === 'done');
    ui.done.textContent = doc && st.status === 'done' ? 'Done ✓' : 'Done';
    [ui.info, ui.legend, ui.list, ui.warnings].forEach((el) => { el.textContent = ''; });
    renderMode();
    if (!doc) return;
    const info = htmlEl('div', { title: `image id ${doc.image_id}` }, ui.info);
    htmlEl('b', { class: 'mm-file' }, info, doc.file_name);
    info.append(` — ${doc.width}×${doc.height}`);
    const pos = doc.count ? `image ${doc.position + 1} / ${doc.count} · ` : '';
    htmlEl('div', {}, ui.info, `${pos}${st.status.replace('_', ' ')} · ${doc.dataset}`);
    if (doc.rules.secondary_inside_primary && names().length > 1) {
      htmlEl('div', { class: 'mm-rule' }, ui.info, `rule: ${names()[1]} inside ${names()[0]}`);
    }
    renderLegend();
    renderList();
    st.warnings.forEach((w) => htmlEl('div', {}, ui.warnings, '⚠ ' + w));
    announce();
  }

  // Tells the page (the gallery) which image is shown and its status, when that changes.
  let announced = '';
  function announce() {
    const detail = st.doc ? { dataset: st.doc.dataset, image_id: st.doc.image_id, status: st.status } : null;
    const key = JSON.stringify(detail);
    if (key === announced) return;
    announced = key;
    document.dispatchEvent(new CustomEvent('mm-editor-image', { detail }));
  }

  // The status line over the canvas: where the next polygon goes, and what to do next.
  function renderMode() {
    ui.mode.textContent = '';
    if (!st.doc) return;
    const t = targetInstance(), inst = st.instances[t], name = names()[st.slot];
    htmlEl('span', { class: 'mm-swatch', style: `background:${rgb(inst ? colorOf(t) : [255, 255, 255])}` }, ui.mode);
    const s = st.session;
    let text = `${TOOLS[st.tool]} · ${inst ? `#${t + 1} ${inst.class}` : `new instance (${defaultClass()})`} · ${name}`;
    if (s) text = `${s.label} · click: include, Shift+click: exclude · Enter or Esc: done`;
    else if (st.drawing) text += ` · ${st.drawing.length} point(s): click the first point, Enter or double-click to close`;
    else if (!inst && st.slot > 0) text += ` · press 1 to draw its ${names()[0]} first`;
    else if (st.tool === 'box') text += ' · drag a box around it';
    else if (st.tool === 'sam') text += ' · click it, or drag a box around it';
    else if (st.tool === 'wand') text += ' · click a region of one colour';
    else if (st.tool === 'lasso') text += ' · click along its edge';
    else if (!inst && st.fresh && names().length > 1) text += ` · or press 2 to add a ${names()[1]} to #${st.active + 1}`;
    htmlEl('span', {}, ui.mode, text);
    if (assists.working) htmlEl('span', { class: 'mm-spinner', title: 'working' }, ui.mode, ' working…');
  }

  // Legend of the mask styles, which is also the mask slot picker.
  function renderLegend() {
    htmlEl('div', { class: 'mm-legend-title' }, ui.legend, 'Mask slot (1–9, Tab)');
    const c = targetInstance() >= 0 ? colorOf(targetInstance()) : [60, 60, 60];
    names().forEach((name, k) => {
      const item = htmlEl('div', { class: 'mm-legend-item' + (k === st.slot ? ' mm-active' : ''), 'data-slot': k }, ui.legend);
      htmlEl('span', { class: `mm-style mm-style-${Math.min(k, 3)}`, style: `--c:${rgb(c)};--f:${rgb(c, 0.45)}` }, item);
      htmlEl('span', {}, item, `${k + 1} ${name}`);
      item.addEventListener('click', () => setSlot(k));
    });
  }

  function renderList() {
    st.instances.forEach((inst, i) => {
      const li = htmlEl('li', { class: 'mm-item', 'data-index': i }, ui.list);
      li.classList.toggle('mm-active', i === targetInstance());
      li.classList.toggle('mm-hidden', st.hidden.has(inst.id));
      htmlEl('span', { class: 'mm-swatch', style: `background:${rgb(colorOf(i))}` }, li);
      htmlEl('span', { class: 'mm-num' }, li, `#${i + 1}`);
      const sel = htmlEl('select', { class: 'mm-item-class', title: 'class' }, li);
      (st.doc.classes.includes(inst.class) ? st.doc.classes : [inst.class, ...st.doc.classes])
        .forEach((c) => htmlEl('option', { value: c }, sel, c));
      sel.value = inst.class;
      sel.addEventListener('change', () => { edit(() => { st.instances[i].class = sel.value; }); focusEditor(); });
      htmlEl('span', { class: 'mm-parts', title: 'parts per mask: ' + names().join(', ') }, li,
        names().map((n) => `${n[0] || '?'}${(inst.masks[n] || []).length}`).join(' '));
      const eye = htmlEl('button', { type: 'button', class: 'mm-eye', title: 'Hide / show (H)' }, li,
        st.hidden.has(inst.id) ? 'show' : 'hide');
      eye.addEventListener('click', (e) => { e.stopPropagation(); toggleHidden(i); });
      const del = htmlEl('button', { type: 'button', class: 'mm-del', title: 'Delete this instance' }, li, '✕');
      del.addEventListener('click', (e) => { e.stopPropagation(); deleteInstance(i); });
      li.addEventListener('click', (e) => { if (!/^(SELECT|OPTION)$/.test(e.target.tagName)) activate(i); });
    });
    const fresh = targetInstance() < 0;
    const li = htmlEl('li', { class: 'mm-item mm-new' + (fresh ? ' mm-active' : '') }, ui.list,
      fresh ? 'new instance: draw its first polygon' : '+ new instance (N)');
    li.addEventListener('click', newInstance);
  }

  // ---- instance and selection commands ---------------------------------------------------------------------
  function activate(i) {
    st.active = i >= 0 && i < st.instances.length ? i : -1;
    st.fresh = false;
    st.sel = null;
    renderAll();
    focusEditor();
  }
  function setSlot(k) {
    if (k < 0 || k >= names().length) return;
    st.slot = k;
    renderPanel();
    focusEditor();
  }
  function newInstance() {
    if (st.drawing) closeOrCancelDrawing();
    Object.assign(st, { active: -1, fresh: false, slot: 0, sel: null });
    renderAll();
    focusEditor();
  }
  function toggleHidden(i) {
    const inst = st.instances[i];
    if (!inst) return;
    if (st.hidden.has(inst.id)) st.hidden.delete(inst.id); else st.hidden.add(inst.id);
    if (st.sel && st.sel.inst === i) st.sel = null;
    renderAll();
  }
  function deleteInstance(i) {
    edit(() => {
      st.instances.splice(i, 1);
      st.active = st.active === i ? -1 : st.active - (st.active > i ? 1 : 0);
      st.sel = null;
    });
  }

  // Delete: the selected vertex (a polygon keeps >= 3 points), else the selected part; `wholePart` skips the
  // vertex. An instance left without any polygon goes too.
  function deleteSelection(wholePart) {
    const s = st.sel;
    if (!s) { toast('Select a vertex or an outline first'); return; }
    const parts = st.instances[s.inst].masks[s.name];
    if (s.vertex >= 0 && !wholePart) {
      if (parts[s.part].length <= 3) toast('A polygon keeps at least 3 points (Shift+Delete deletes the part)');
      else edit(() => { parts[s.part].splice(s.vertex, 1); st.sel = null; });
      return;
    }
    edit(() => {
      parts.splice(s.part, 1);
      st.sel = null;
      if (!names().some((n) => (st.instances[s.inst].masks[n] || []).length)) {
        st.instances.splice(s.inst, 1);
        st.active = -1;
      }
    });
  }

  function insertOnEdge(hit) {
    edit(() => {
      st.instances[hit.inst].masks[hit.name][hit.part].splice(hit.idx + 1, 0, clampPt(hit.point[0], hit.point[1]));
      Object.assign(st, { active: hit.inst, fresh: false });
      st.sel = { inst: hit.inst, name: hit.name, part: hit.part, vertex: hit.idx + 1 };
    });
  }

  // ---- drawing ---------------------------------------------------------------------------------------------
  // Latency of a click that added a vertex: from the pointer event to the start of the next animation frame
  // callback, i.e. the frame that shows the vertex (it is in the DOM by then).
  function recordLatency(e) {
    const t0 = e.timeStamp;
    requestAnimationFrame(() => {
      latencies.push(performance.now() - t0);
      if (latencies.length > LATENCY_LIMIT) latencies.splice(0, latencies.length - LATENCY_LIMIT);
    });
  }

  // A click at screen point p: start, extend or close the polygon being drawn.
  function clickVertex(e, p) {
    const pt = clampPt(...toImage(p)), d = st.drawing;  // a click off the image lands on its border
    st.cursor = p;
    if (!d) {
      st.drawing = [pt];
      st.sel = null;
      renderOverlay();  // hides the handles while drawing
      renderDraw();
    } else if (d.length >= 3 && dist(toScreen(d[0]), p) <= SNAP_PX) {
      closeDrawing();
      return;
    } else if (dist(toScreen(d[d.length - 1]), p) < DUP_PX) {
      return;  // the second click of a double-click
    } else {
      d.push(pt);
      appendDrawVertex();
    }
    recordLatency(e);
    renderMode();
  }

  // The instance the next closed polygon goes to; -1: a new one. A first-mask polygon after a finished instance
  // drawn just now starts the next instance, so forgetting N never merges two objects; to add a part to an
  // instance, pick it (list, outline) first.
  function targetInstance() {
    const inst = st.instances[st.active];
    if (!inst) return -1;
    return st.fresh && st.slot === 0 && (inst.masks[names()[0]] || []).length ? -1 : st.active;
  }

  // Closes the polygon being drawn into a new part of the target instance's active mask: one undoable edit.
  // After a later mask's polygon of a just-drawn instance, the slot goes back to the first mask.
  function closeDrawing() {
    if (!st.drawing) return false;
    if (st.drawing.length < 3) { toast('A polygon needs at least 3 points'); return false; }
    const pts = st.drawing;
    st.drawing = null;
    st.lasso = null;
    edit(() => { addParts(-1, names()[st.slot], [pts]); });
    return true;
  }

  // Adds `parts` to mask `name` of instance `i` (-1: the target instance, a new one if none), inside an edit.
  // Returns where they went. After a just-drawn instance's first mask, the slot moves on to its second (when
  // that setting is on); after a later mask, back to the first, so the next polygon starts a new instance.
  function addParts(i, name, parts) {
    if (i < 0) i = targetInstance();
    if (i < 0) {
      const masks = Object.fromEntries(names().map((n) => [n, []]));
      st.instances.push({ id: newId(new Set(st.instances.map((x) => x.id))), class: defaultClass(), masks });
      i = st.instances.length - 1;
      st.fresh = true;
    }
    const inst = st.instances[i], list = (inst.masks[name] = inst.masks[name] || []), start = list.length;
    st.active = i;
    st.hidden.delete(inst.id);
    list.push(...parts);
    st.sel = { inst: i, name, part: start, vertex: -1 };
    if (st.fresh) {
      const first = name === names()[0];
      st.slot = first && ui.partNext.checked && names().length > 1 ? 1 : 0;
    }
    return { instId: inst.id, name, start, count: parts.length };
  }
  function cancelDrawing() {
    st.drawing = null;
    st.lasso = null;
    renderAll();
  }
  function closeOrCancelDrawing() {
    if (!(st.drawing && st.drawing.length >= 3 && closeDrawing())) cancelDrawing();
  }
  const finishDrawing = () => (st.lasso ? closeLasso() : closeDrawing());
  function popVertex() {
    if (st.lasso) {  // the lasso's last click and its path
      st.lasso.pop();
      if (!st.lasso.length) { cancelDrawing(); return; }
      syncLasso();
      return;
    }
    st.drawing.pop();
    if (!st.drawing.length) { cancelDrawing(); return; }
    renderDraw();
    renderPanel();
  }

  // ---- hit testing (screen space) --------------------------------------------------------------------------
  function hitHandle(p) {
    let best = null, bestD = Infinity;
    for (const h of st.handles) {
      const d = dist(h, p), reach = h.type === 'v' ? VERTEX_HIT_PX : MID_HIT_PX;
      if (d <= reach && d < bestD && !(best && best.type === 'v' && h.type === 'm')) { best = h; bestD = d; }
    }
    return best;
  }

  // The nearest visible outline within EDGE_HIT_PX: {inst, name, part, idx (edge start), point (image px)}.
  function hitEdge(p) {
    let best = null, bestD = EDGE_HIT_PX;
    st.instances.forEach((inst, i) => {
      if (st.hidden.has(inst.id)) return;
      for (const name of names()) {
        (inst.masks[name] || []).forEach((part, j) => part.forEach((pt, v) => {
          const a = toScreen(pt), b = toScreen(part[(v + 1) % part.length]);
          const dx = b.x - a.x, dy = b.y - a.y, len2 = dx * dx + dy * dy;
          const t = len2 > 0 ? clamp(((p.x - a.x) * dx + (p.y - a.y) * dy) / len2, 0, 1) : 0;
          const c = { x: a.x + t * dx, y: a.y + t * dy }, d = dist(c, p);
          if (d < bestD) { bestD = d; best = { inst: i, name, part: j, idx: v, point: toImage(c) }; }
        }));
      }
    });
    return best;
  }

  function insidePart(part, x, y) {
    let inside = false;
    for (let i = 0, j = part.length - 1; i < part.length; j = i++) {
      const [xi, yi] = part[i], [xj, yj] = part[j];
      if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
    }
    return inside;
  }
  const selectedPart = () => st.sel && st.instances[st.sel.inst].masks[st.sel.name][st.sel.part];

  // ---- pointer gestures: a press becomes a click (draw), a vertex drag, a part move, a select or a pan ---------
  function onPointerDown(e) {
    if (!st.doc || st.gesture || e.target === ui.zoom) return;
    focusEditor();
    const p = local(e);
    let g = { kind: 'click', start: p, moved: false, id: e.pointerId };
    if (e.button === 1 || e.button === 2 || (e.button === 0 && st.space)) {
      g = { ...g, kind: 'pan', tx: st.view.tx, ty: st.view.ty };
      ui.stage.classList.add('mm-panning');
    } else if (e.button !== 0) {
      return;
    } else if (st.tool === 'polygon' && !(st.session && st.session.anyTool)) {
      if (!st.drawing && !e.shiftKey) g = pressOnShapes(e, g) || g;
    } else if (!st.drawing && !e.shiftKey && hitHandle(p)) {
      g = pressOnShapes(e, g) || g;  // the assists' polygons are ordinary ones: their vertices drag
    } else if (st.tool === 'box' || st.tool === 'sam') {
      g = { ...g, kind: 'box' };
    }
    e.preventDefault();
    st.gesture = g;
    try { ui.stage.setPointerCapture(e.pointerId); } catch (err) { /* the pointer is already gone */ }
  }

  // What a press on existing shapes starts (not while drawing): a vertex drag, a midpoint insert + drag, an
  // Alt-click insert, a move of the selected part, or an outline select. Null: a plain click, which draws.
  function pressOnShapes(e, base) {
    const p = base.start, h = hitHandle(p);
    if (h) {
      const before = snapshot(), part = st.instances[h.inst].masks[h.name][h.part];
      if (h.type === 'm') {
        const a = part[h.idx], b = part[(h.idx + 1) % part.length];
        part.splice(h.idx + 1, 0, [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2]);
      }
      st.sel = { inst: h.inst, name: h.name, part: h.part, vertex: h.idx + (h.type === 'm' ? 1 : 0) };
      Object.assign(st, { slot: names().indexOf(h.name), fresh: false });
      renderAll();
      return { ...base, kind: 'vertex', before };
    }
    const edge = hitEdge(p);
    if (e.altKey && edge) { insertOnEdge(edge); return { ...base, kind: 'none' }; }
    const part = selectedPart(), ip = toImage(p);
    if (part && insidePart(part, ip[0], ip[1])) {
      return { ...base, kind: 'move', before: snapshot(), orig: part.map((c) => [c[0], c[1]]), startImg: ip };
    }
    return edge ? { ...base, kind: 'select', edge } : null;
  }

  function onPointerMove(e) {
    if (!st.doc) return;
    const p = local(e), g = st.gesture;
    if (st.drawing) { st.cursor = p; updateRubber(); }
    if (!g) { hoverCursor(p); return; }
    if (!g.moved && dist(p, g.start) >= CLICK_SLOP_PX) g.moved = true;
    if (!g.moved) return;
    if (g.kind === 'pan') {
      Object.assign(st.view, { tx: g.tx + p.x - g.start.x, ty: g.ty + p.y - g.start.y, fitted: false });
      applyView();
    } else if (g.kind === 'box') {
      st.boxDrag = [g.start, p];
      renderDraw();
    } else if (g.kind === 'vertex') {
      selectedPart()[st.sel.vertex] = clampPt(...toImage(p));
      requestDragRender();
    } else if (g.kind === 'move') {  // the whole part follows, stopped at the image border
      const [x, y] = toImage(p), xs = g.orig.map((c) => c[0]), ys = g.orig.map((c) => c[1]);
      const dx = clamp(x - g.startImg[0], -Math.min(...xs), st.doc.width - Math.max(...xs));
      const dy = clamp(y - g.startImg[1], -Math.min(...ys), st.doc.height - Math.max(...ys));
      const part = selectedPart();
      g.orig.forEach((c, i) => { part[i] = clampPt(c[0] + dx, c[1] + dy); });
      requestDragRender();
    }
  }

  function onPointerUp(e) {
    const g = st.gesture;
    if (!g || g.id !== e.pointerId) return;
    st.gesture = null;
    ui.stage.classList.remove('mm-panning');
    if (g.kind === 'box' && g.moved) {
      const a = clampPt(...toImage(g.start)), b = clampPt(...toImage(local(e)));
      st.boxDrag = null;
      renderDraw();
      const box = [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])].map(round2);
      if (box[2] - box[0] < 2 || box[3] - box[1] < 2) { toast('Drag a box around the object'); return; }
      startSession(st.tool === 'sam' ? 'sam' : 'grabcut', { box });
    } else if (g.kind === 'vertex' || (g.kind === 'move' && g.moved)) {
      record(g.before);  // one undoable edit per drag (a midpoint insert included)
    } else if (g.kind === 'select' && !g.moved) {
      const ed = g.edge;
      Object.assign(st, { active: ed.inst, fresh: false, slot: names().indexOf(ed.name),
        sel: { inst: ed.inst, name: ed.name, part: ed.part, vertex: -1 } });
      renderAll();
    } else if ((g.kind === 'click' || g.kind === 'move' || g.kind === 'box') && !g.moved) {
      onClick(e, local(e));
    }
  }

  // A click on the image: refines the running assist, or does what the tool does.
  function onClick(e, p) {
    const pt = clampPt(...toImage(p)), s = st.session;
    if (s && (s.anyTool || (s.kind === 'grabcut' && st.tool === 'box') || (s.kind === 'sam' && st.tool === 'sam'))) {
      refineClick(e, pt);
    } else if (st.tool === 'sam') startSession('sam', { fg: [[round2(pt[0]), round2(pt[1])]] });
    else if (st.tool === 'wand') startSession('flood', { point: [round2(pt[0]), round2(pt[1])] });
    else if (st.tool === 'lasso') { lassoClick(p); recordLatency(e); renderMode(); }
    else if (st.tool === 'box') toast('Drag a box around the object');
    else clickVertex(e, p);
  }

  function onPointerCancel() {
    const g = st.gesture;
    st.gesture = null;
    st.boxDrag = null;
    ui.stage.classList.remove('mm-panning');
    if (g && g.before) { st.instances = cloneInstances(g.before.instances); validateSelection(); renderAll(); }
  }

  function onDoubleClick(e) {
    if (!st.doc) return;
    e.preventDefault();
    if (st.drawing) { finishDrawing(); return; }
    if (st.tool !== 'polygon' || st.session) return;
    const p = local(e), h = hitHandle(p);
    if (h && h.type === 'v') return;  // the double-click landed on a vertex it has just made
    const edge = hitEdge(p);
    if (edge) insertOnEdge(edge);
  }

  function onWheel(e) {
    if (!st.doc) return;
    e.preventDefault();
    const unit = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? 400 : 1;
    zoomAt(local(e), Math.exp(-clamp(e.deltaY * unit, -300, 300) * 0.0015));
  }

  function hoverCursor(p) {
    const h = !st.drawing && hitHandle(p);
    ui.stage.classList.toggle('mm-over-handle', !!h && h.type === 'v');
    ui.stage.classList.toggle('mm-over-mid', !!h && h.type === 'm');
    ui.stage.classList.toggle('mm-over-edge', !h && !st.drawing && !!hitEdge(p));
  }

  // ---- keyboard: only while the editor has the focus or the pointer, never while typing in a field ---------
  function keysActive(e) {
    const t = e.target;
    if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName || ''))) return false;
    return st.hover || ui.root.contains(document.activeElement);
  }

  function onKeyDown(e) {
    if (!ui.root.isConnected) { detach(); return; }
    if (!st.doc || !keysActive(e)) return;
    const k = e.key, ctrl = e.ctrlKey || e.metaKey;
    let handled = true;
    if (ctrl && (k === 'z' || k === 'Z')) { if (e.shiftKey) redo(); else undo(); }
    else if (ctrl && (k === 'y' || k === 'Y')) redo();
    else if (ctrl || e.altKey) handled = false;  // other browser shortcuts stay
    else if (k === 'Enter') { if (st.drawing) finishDrawing(); else if (!endSession()) handled = false; }
    else if (k === 'Escape') { if (st.drawing) cancelDrawing(); else if (!endSession()) { st.sel = null; renderAll(); } }
    else if (k === 'Backspace' && st.drawing) popVertex();
    else if (k === 'Backspace' || k === 'Delete') deleteSelection(e.shiftKey);
    else if (k === 'n' || k === 'N') newInstance();
    else if (k === 'Tab') setSlot((st.slot + (e.shiftKey ? names().length - 1 : 1)) % names().length);
    else if (/^[1-9]$/.test(k) && Number(k) <= names().length) setSlot(Number(k) - 1);
    else if (k === 'f' || k === 'F') fit();
    else if (k === 'h' || k === 'H') { if (st.active >= 0) toggleHidden(st.active); }
    else if (TOOL_KEYS[k.toLowerCase()]) setTool(TOOL_KEYS[k.toLowerCase()]);
    else if (k === 'i' || k === 'I') partInObject();
    else if (k === 'c' || k === 'C') clipToObject();
    else if (k === 'g' || k === 'G') snapSelected();
    else if (k === 'a' || k === 'A') navigate('prev');
    else if (k === 'd' || k === 'D') navigate('next');
    else if (k === ' ') { st.space = true; ui.stage.classList.add('mm-panning'); }
    else handled = false;
    if (handled) { e.preventDefault(); e.stopPropagation(); }
  }
  const TOOL_KEYS = { p: 'polygon', b: 'box', l: 'lasso', w: 'wand', s: 'sam' };
  function endSpace() {
    st.space = false;
    if (!st.gesture) ui.stage.classList.remove('mm-panning');
  }

  // ---- toolbar ---------------------------------------------------------------------------------------------
  const actions = {
    prev: () => navigate('prev'), next: () => navigate('next'), next_unlabelled: () => navigate('next_unlabelled'),
    reload: () => navigate(null), new: newInstance, undo, redo, delete: () => deleteSelection(false), fit,
    copy: () => addFromServer('copy_previous', 'Copy previous'), propose: () => addFromServer('propose', 'Propose'),
    part: partInObject, clip: clipToObject, snap: snapSelected,
    done: () => edit(() => {
      st.status = st.status === 'done' ? (st.instances.length ? 'in_progress' : 'unlabelled') : 'done';
    }),
  };
  function onToolbarClick(e) {
    const b = e.target.closest('button[data-act]');
    if (!b || b.disabled || !(actions[b.dataset.act] || b.dataset.tool)) return;
    focusEditor();  // keys keep working, and Space/Enter do not press the button again
    if (b.dataset.tool) setTool(b.dataset.tool); else actions[b.dataset.act]();
  }

  // ---- wiring ----------------------------------------------------------------------------------------------
  const listeners = [
    [ui.stage, 'pointerdown', onPointerDown], [ui.stage, 'pointermove', onPointerMove],
    [ui.stage, 'pointerup', onPointerUp], [ui.stage, 'pointercancel', onPointerCancel],
    [ui.stage, 'dblclick', onDoubleClick], [ui.stage, 'wheel', onWheel, { passive: false }],
    [ui.stage, 'contextmenu', (e) => e.preventDefault()],
    [ui.stage, 'pointerleave', () => { st.cursor = null; updateRubber(); }],
    [ui.root, 'pointerenter', () => { st.hover = true; }], [ui.root, 'pointerleave', () => { st.hover = false; }],
    [q('.mm-toolbar'), 'click', onToolbarClick], [ui.zoom, 'click', () => { fit(); focusEditor(); }],
    [ui.save, 'click', () => { if (saver.error && !saver.blocked) scheduleSave(); }],
    [ui.classSel, 'change', () => { renderMode(); focusEditor(); }],
    [ui.tolerance, 'input', () => { if (st.session && st.session.kind === 'flood') runSession(); }],
    [ui.tolerance, 'change', focusEditor],
    [ui.partNext, 'change', () => {
      try { localStorage.setItem(PART_NEXT_KEY, ui.partNext.checked ? '1' : '0'); } catch (err) { /* private mode */ }
      renderMode();
      focusEditor();
    }],
    [ui.image, 'error', () => { if (st.doc) toast(`Could not load the image ${st.doc.image_url}`, 6000); }],
    [document, 'keydown', onKeyDown, true], [document, 'keyup', (e) => { if (e.key === ' ') endSpace(); }, true],
    [window, 'blur', endSpace],
    [window, 'beforeunload', (e) => { if (saver.inflight || saver.pending || saver.error) e.preventDefault(); }],
  ];
  listeners.forEach(([target, type, fn, opts]) => target.addEventListener(type, fn, opts));
  try { ui.partNext.checked = localStorage.getItem(PART_NEXT_KEY) === '1'; } catch (err) { /* private mode */ }
  const resizeObserver = new ResizeObserver(() => { if (st.view.fitted) fit(); else applyView(); });
  resizeObserver.observe(ui.stage);
  function detach() {  // the component was unmounted: drop the document-level listeners
    listeners.forEach(([target, type, fn, opts]) => target.removeEventListener(type, fn, opts));
    resizeObserver.disconnect();
  }

  // For tests and debugging.
  const api = {
    state: () => ({
      dataset: st.doc && st.doc.dataset, image_id: st.doc && st.doc.image_id, revision: saver.revision,
      status: st.status, instances: st.doc ? exportInstances() : [], active: st.active, target: targetInstance(),
      slot: st.slot,
      mask_name: names()[st.slot], drawing: st.drawing ? st.drawing.length : 0, save: ui.save.dataset.state,
      saving: saver.inflight || saver.pending, undo: st.undo.length, redo: st.redo.length, hidden: [...st.hidden],
      view: { ...st.view }, warnings: st.warnings.slice(), tool: st.tool,
      session: st.session ? { kind: st.session.kind, name: st.session.name, fg: st.session.fg.length,
        bg: st.session.bg.length } : null,
      assist: { working: assists.working, dropped: assists.dropped, seconds: assists.seconds.slice(-20) },
    }),
    lastLatencies: latencies,
    drawingPoints: () => (st.drawing ? st.drawing.map((p) => [p[0], p[1]]) : []),
    flush: flushSaves,
    open: (imageId) => navigate(null, String(imageId)),  // the gallery's thumbnails
  };
  window.mmEditor = api;
  const host = element.parentElement && element.parentElement.closest('[id]');  // the block with the elem_id
  window.mmEditors = Object.assign(window.mmEditors || {}, { [host ? host.id : uid]: api });

  // A document from Python. Switching to another image first finishes this image's saves (a pending edit
  // would be lost otherwise); of several documents arriving meanwhile, the last one wins.
  let valueToken = 0;
  async function onValue() {
    const raw = parseValue(props.value), token = ++valueToken;
    if (st.doc && (!raw || String(raw.image_id) !== st.doc.image_id || String(raw.dataset) !== st.doc.dataset)) {
      if (st.drawing) closeOrCancelDrawing();
      await flushSaves();
      if (token !== valueToken) return;
    }
    loadDocument(raw);
  }
  watch('value', onValue);
  loadDocument(parseValue(props.value));
})();
