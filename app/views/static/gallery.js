// Thumbnail gallery of the Label tab. Runs as a gr.HTML js_on_load body: `element`, `props` and `watch` come
// from Gradio. Clicking a card opens its image in the editor named by data-editor (through its JS api); the
// editor's `mm-editor-image` events mark the current image and keep its badge in step with autosaves.
(function () {
  'use strict';
  const root = element.querySelector('.mm-gallery');
  const grid = element.querySelector('.mm-gallery-grid');
  const empty = element.querySelector('.mm-gallery-empty');
  let value = { dataset: '', items: [], status_labels: {} };
  let current = { dataset: null, image_id: null, status: null };

  function parse(v) {
    if (v && typeof v === 'object') return v;
    try { return typeof v === 'string' && v ? JSON.parse(v) : null; } catch (err) { return null; }
  }
  const label = (status) => (value.status_labels && value.status_labels[status]) || String(status).replace('_', ' ');

  function setBadge(card, status) {
    const badge = card.querySelector('.mm-badge');
    card.dataset.status = status;
    badge.dataset.status = status;
    badge.textContent = label(status);
  }

  function mark() {
    grid.querySelectorAll('.mm-card').forEach((card) => {
      const on = current.dataset === value.dataset && card.dataset.id === current.image_id;
      card.classList.toggle('mm-current', on);
      card.setAttribute('aria-current', on ? 'true' : 'false');
      if (on && current.status) setBadge(card, current.status);
    });
  }

  function card(item) {
    const el = document.createElement('button');
    el.type = 'button';
    el.className = 'mm-card';
    el.dataset.id = String(item.id);
    el.title = String(item.name);
    const img = document.createElement('img');
    img.loading = 'lazy';
    img.alt = String(item.name);
    img.src = String(item.thumb);
    const badge = document.createElement('span');
    badge.className = 'mm-badge';
    const name = document.createElement('span');
    name.className = 'mm-name';
    name.textContent = String(item.name);
    el.append(img, badge, name);
    setBadge(el, String(item.status));
    el.addEventListener('click', () => {
      const editor = window.mmEditors && window.mmEditors[root.dataset.editor];
      if (editor) editor.open(el.dataset.id);
    });
    return el;
  }

  // Same images as shown: badges and names in place (no reload of the thumbnails); else a new grid.
  function render() {
    const items = Array.isArray(value.items) ? value.items : [];
    const cards = [...grid.children];
    if (cards.length === items.length && cards.every((c, i) => c.dataset.id === String(items[i].id))) {
      items.forEach((item, i) => setBadge(cards[i], String(item.status)));
    } else {
      grid.textContent = '';
      items.forEach((item) => grid.appendChild(card(item)));
    }
    empty.hidden = items.length > 0 || !value.dataset;
    mark();
  }

  document.addEventListener('mm-editor-image', (e) => {
    if (!root.isConnected) return;
    current = e.detail || { dataset: null, image_id: null, status: null };
    mark();
    const on = grid.querySelector('.mm-card.mm-current');
    if (on) {  // into the gallery's own view; scrollIntoView would scroll the page away from the editor
      const top = on.offsetTop - root.offsetTop, bottom = top + on.offsetHeight;
      if (top < root.scrollTop) root.scrollTop = top;
      else if (bottom > root.scrollTop + root.clientHeight) root.scrollTop = bottom - root.clientHeight;
    }
  });
  const editor = window.mmEditors && window.mmEditors[root.dataset.editor];
  if (editor) {  // the editor may have shown its image before this gallery listened
    const s = editor.state();
    current = { dataset: s.dataset, image_id: s.image_id, status: s.status };
  }
  watch('value', () => { value = parse(props.value) || value; render(); });
  value = parse(props.value) || value;
  render();
})();
