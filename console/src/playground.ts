/**
 * The playground: pick a model, fill the form its catalogue entry generates, generate from text or
 * edit uploaded images (with a painted mask), and watch it run. Results are added side by side,
 * newest first, never replaced: each with its seed, duration and cost, and "Reuse settings",
 * "Edit this image" and "Download".
 */
import type { ConsoleContext } from './api.js';
import { progressText, readEventStream } from './event-stream.js';
import { formatDuration } from './duration.js';
import { failureHeadline, failureOf, problemLines, type Failure } from './failure.js';
import { checkImageFile } from './image-file.js';
import { createMaskEditor, type MaskEditor } from './mask-editor.js';
import {
  carryOver,
  editFields,
  editModes,
  formFields,
  generateBody,
  operationSchema,
  priceHint,
  rawFromParameters,
  readValues,
  settingsOf,
  type FormValues,
  type ModelInfo,
  type Operation,
  type ReuseSettings,
} from './param-form.js';
import { renderFields, type RenderedFields } from './param-form-view.js';
import { formatUsd, h, replaceChildren, toast } from './ui.js';

interface ResultImage {
  url?: string;
  b64_json?: string;
  mime_type?: string;
  width?: number;
  height?: number;
  seed?: number;
  revised_prompt?: string;
}

interface GenerationResult {
  id: string;
  model: string;
  images: ResultImage[];
  usage?: { images?: number; estimated_cost_usd?: number | null; upstream_ms?: number };
}

/** What ctx.state may carry here: settings to reuse, or an image to edit (from the gallery). */
interface PlaygroundState {
  reuse?: ReuseSettings;
  editImage?: { url: string; id?: string; model?: string };
}

class RequestFailed extends Error {
  constructor(readonly failure: Failure) {
    super(failure.message);
  }
}

/** The failure a non-2xx answer describes (its `{"error": {...}}` body). */
async function failureOfAnswer(res: Response): Promise<Failure> {
  try {
    return failureOf(await res.json(), res.status);
  } catch {
    return failureOf(undefined, res.status);
  }
}

/** "model · prompt", leaving out what is empty (a mode that takes no prompt): no dangling "·". */
function captionOf(model: string, promptText: string | null | undefined): string {
  return [model, promptText ?? ''].filter((part) => part.trim() !== '').join(' · ');
}

/** Seconds with a tenth, for the clock of a running generation. */
function elapsedText(ms: number): string {
  return `Elapsed ${(Math.max(0, ms) / 1000).toFixed(1)} s`;
}

/** Shows or hides an element, whatever display its classes give it ([hidden] alone loses to `display: flex`). */
function shown(el: HTMLElement, visible: boolean): void {
  el.hidden = !visible;
  if (visible) el.style.removeProperty('display');
  else el.style.setProperty('display', 'none');
}

/**
 * Draws the playground. Returns how to hand it state later: the shell keeps this view for the
 * session, so leaving the page loses neither the form nor the results (nor a request running).
 */
export async function render(root: HTMLElement, ctx: ConsoleContext): Promise<{ receive(state: unknown): Promise<void> } | undefined> {
  const state = (ctx.state ?? {}) as PlaygroundState;
  replaceChildren(root, h('h1', null, 'Playground'), h('p', { class: 'loading' }, 'Loading models…'));

  let models: ModelInfo[];
  try {
    const res = await ctx.api('/v1/models');
    if (!res.ok) throw new RequestFailed(await failureOfAnswer(res));
    // The playground generates and edits; models that only upscale or describe are not offered here.
    models = ((await res.json()) as { data: ModelInfo[] }).data.filter((m) => m.operations.includes('generate') || m.operations.includes('edit'));
  } catch (err) {
    replaceChildren(root, h('h1', null, 'Playground'), h('p', { class: 'form-error', role: 'alert' }, `The models could not be loaded: ${(err as Error).message}`));
    return undefined;
  }
  if (models.length === 0) {
    replaceChildren(root, h('h1', null, 'Playground'), h('p', { class: 'notice' }, 'This key may use no model.'));
    return undefined;
  }

  // ---- the form
  const modelSelect = h('select', { id: 'pg-model', name: 'model' }, models.map((m) => h('option', { value: m.id }, m.id)));
  const modelHint = h('p', { class: 'hint', id: 'pg-model-help' });
  // Why the console chose the model itself (an image to edit made by a model that does not edit).
  const modelNote = h('p', { class: 'notice model-note', id: 'pg-model-note', role: 'status' });
  modelSelect.setAttribute('aria-describedby', 'pg-model-help pg-model-note');

  const opGenerate = h('input', { type: 'radio', name: 'pg-operation', id: 'pg-op-generate', value: 'generate', checked: true });
  const opEdit = h('input', { type: 'radio', name: 'pg-operation', id: 'pg-op-edit', value: 'edit' });
  const operationGroup = h(
    'fieldset',
    { class: 'field row' },
    h('legend', null, 'Operation'),
    h('span', { class: 'row' }, opGenerate, h('label', { for: 'pg-op-generate' }, 'Generate from text')),
    h('span', { class: 'row' }, opEdit, h('label', { for: 'pg-op-edit' }, 'Edit an image')),
  );

  const modeSelect = h('select', { id: 'pg-mode', name: 'mode' });
  const modeField = h('div', { class: 'field' }, h('label', { for: 'pg-mode' }, 'Mode'), modeSelect);

  const fileInput = h('input', { id: 'pg-image', type: 'file', name: 'image', accept: 'image/png,image/jpeg,image/webp' });
  const dropZone = h(
    'div',
    { class: 'drop-zone card' },
    h('label', { for: 'pg-image' }, 'Image'),
    fileInput,
    h('p', { class: 'hint', id: 'pg-image-help' }, 'Choose a file or drop images here.'),
    h('p', { class: 'form-error', role: 'alert', id: 'pg-image-error' }),
  );
  const imageError = dropZone.querySelector('#pg-image-error') as HTMLElement;
  fileInput.setAttribute('aria-describedby', 'pg-image-help pg-image-error');
  // A file input is as wide as its button and text; on a phone, no wider than the box.
  fileInput.style.setProperty('max-width', '100%');
  dropZone.style.setProperty('border-style', 'dashed');
  const thumbs = h('div', { class: 'row source-images' });
  const maskSlot = h('div', { class: 'mask-slot' });
  const editSection = h('div', { class: 'edit-section' }, modeField, dropZone, thumbs, maskSlot);

  const prompt = h('textarea', { id: 'pg-prompt', name: 'prompt', rows: 3, required: true, placeholder: 'Describe the image', 'aria-describedby': 'pg-prompt-help' });
  const promptHint = h('p', { class: 'hint', id: 'pg-prompt-help' });
  const fieldsSlot = h('div', { class: 'fields-slot' });
  const generateButton = h('button', { type: 'submit', class: 'primary' }, 'Generate');
  const formError = h('p', { class: 'form-error', role: 'alert' });
  const form = h(
    'form',
    { class: 'card playground-form', novalidate: true },
    h('div', { class: 'field' }, h('label', { for: 'pg-model' }, 'Model'), modelSelect, modelHint, modelNote),
    operationGroup,
    editSection,
    h('div', { class: 'field' }, h('label', { for: 'pg-prompt' }, 'Prompt'), prompt, promptHint),
    fieldsSlot,
    h('div', { class: 'row submit-row' }, generateButton),
    formError,
  );

  const results = h('div', { class: 'grid results', 'aria-live': 'polite' });
  const emptyResults = h('p', { class: 'muted' }, 'Results appear here, newest first; earlier ones stay.');
  replaceChildren(root, h('h1', null, 'Playground'), form, h('h2', null, 'Results'), emptyResults, results);
  results.style.setProperty('margin-top', 'var(--gap, 1rem)');
  (form.querySelector('.submit-row') as HTMLElement).style.setProperty('margin-top', 'var(--gap, 1rem)');

  // ---- what the form shows: the model, its operation and mode, their fields and inputs
  let sources: Blob[] = [];
  let maskEditor: MaskEditor | undefined;
  let fields = formFields(models[0]!, 'generate');
  let view: RenderedFields = renderFields([], 'pg');

  const currentModel = () => models.find((m) => m.id === modelSelect.value) ?? models[0]!;
  const operation = (): Operation => (opEdit.checked ? 'edit' : 'generate');
  const mode = () => (operation() === 'edit' ? modeSelect.value || undefined : undefined);
  const schema = () => operationSchema(currentModel(), operation(), mode());
  /** The longest prompt the selected model, operation and mode take, from the catalogue; 0: no prompt. */
  const promptLimit = () => schema()?.prompt.max_length ?? 0;
  const limitText = () => (promptLimit() > 0 ? `Up to ${promptLimit()} characters.` : '');

  /** What the mask editor shows: its source image and whether the mask is required (kept while they stay the same). */
  let maskFor: { source: Blob; required: boolean } | undefined;
  let maskRequest = 0;

  /** Shows the mask editor over the first image where the edit mode takes a mask; what was painted stays while the image does. */
  async function showMask(): Promise<void> {
    const s = schema();
    const source = operation() === 'edit' && s?.mask ? sources[0] : undefined;
    const required = s?.mask?.required === true;
    if (source && maskEditor && maskFor?.source === source && maskFor.required === required) return;
    const request = ++maskRequest;
    maskEditor?.destroy();
    maskEditor = undefined;
    maskFor = undefined;
    maskSlot.replaceChildren();
    if (!source) return;
    try {
      const editor = await createMaskEditor(source, { required });
      // The form changed while the image loaded.
      if (request !== maskRequest) return editor.destroy();
      maskEditor = editor;
      maskFor = { source, required };
      maskSlot.replaceChildren(h('h3', null, required ? 'Mask (required)' : 'Mask (optional)'), editor.element);
    } catch (err) {
      if (request === maskRequest) maskSlot.replaceChildren(h('p', { class: 'form-error', role: 'alert' }, `The image cannot be painted on: ${(err as Error).message}`));
    }
  }

  function showSources(): void {
    thumbs.replaceChildren(
      ...sources.map((blob, i) => {
        const url = URL.createObjectURL(blob);
        const img = h('img', { src: url, alt: `Source image ${i + 1}`, width: 96 });
        img.addEventListener('load', () => URL.revokeObjectURL(url), { once: true });
        // Bytes that start like an image but do not decode: no broken thumbnail, the file is dropped.
        img.addEventListener('error', () => {
          URL.revokeObjectURL(url);
          sources = sources.filter((source) => source !== blob);
          imageError.textContent = `Source image ${i + 1} cannot be read as an image; choose another file.`;
          showSources();
          void showMask();
          recheck();
        }, { once: true });
        const remove = h('button', { type: 'button', 'aria-label': `Remove source image ${i + 1}` }, 'Remove');
        remove.addEventListener('click', () => {
          sources = sources.filter((_, j) => j !== i);
          showSources();
          void showMask();
          recheck();
        });
        const figure = h('figure', { class: 'source-image row' }, img, remove);
        figure.style.setProperty('margin', '0');
        return figure;
      }),
    );
  }

  function setSources(images: Blob[]): void {
    const max = schema()?.images?.max ?? 1;
    if (images.length > max) toast(`${currentModel().id} takes at most ${max} image${max === 1 ? '' : 's'}; the first ${max} are used.`, 'error');
    sources = images.slice(0, max);
    showSources();
    void showMask();
    recheck();
  }

  let choosing = 0;
  /** Takes the chosen or dropped files that are PNG, JPEG or WebP images (by their first bytes); says which are not, there and then. */
  async function chooseFiles(files: Blob[]): Promise<void> {
    const request = ++choosing;
    const checked = await Promise.all(files.map((file) => checkImageFile(file)));
    // A later choice was made while these were read.
    if (request !== choosing) return;
    const images = checked.flatMap((c) => ('image' in c ? [c.image] : []));
    imageError.textContent = checked.flatMap((c) => ('problem' in c ? [c.problem] : [])).join(' ');
    // The picker shows no refused file as chosen.
    if (images.length < files.length) fileInput.value = '';
    if (images.length > 0 || files.length === 0) setSources(images);
  }

  /**
   * Redraws the parts that depend on the model, operation and mode. `keep`: the texts to fill in;
   * by default what was typed, where the new form has the field and takes the value (carryOver).
   */
  function update(keep?: Record<string, string>): void {
    const typed = view.read();
    const fieldsBefore = fields;
    const model = currentModel();
    modelHint.textContent = [model.description, model.async ? 'Runs as an upstream task.' : '', priceHint(model)]
      .filter(Boolean)
      .join(' ');
    const ops = model.operations;
    if (!ops.includes(operation())) (ops.includes('generate') ? opGenerate : opEdit).checked = true;
    opGenerate.disabled = !ops.includes('generate');
    opEdit.disabled = !ops.includes('edit');
    shown(operationGroup, ops.length > 1);

    const modes = editModes(model);
    const previousMode = modeSelect.value;
    modeSelect.replaceChildren(...modes.map((m) => h('option', { value: m }, m.replace(/_/g, ' '))));
    if (modes.includes(previousMode)) modeSelect.value = previousMode;
    shown(modeField, modes.length > 1);
    shown(editSection, operation() === 'edit');
    // The button says what it does: Generate, Edit, or the edit mode's name (Remix, Reframe…).
    const editMode = mode();
    generateButton.textContent = operation() === 'generate' ? 'Generate' : !editMode || editMode === 'edit' ? 'Edit' : editMode.charAt(0).toUpperCase() + editMode.slice(1).replace(/_/g, ' ');

    const s = schema();
    const max = s?.images?.max ?? 1;
    fileInput.multiple = max > 1;
    (dropZone.querySelector('.hint') as HTMLElement).textContent = `Choose ${max > 1 ? `up to ${max} images` : 'an image'} (PNG, JPEG or WebP), or drop ${max > 1 ? 'them' : 'it'} here.`;
    if (sources.length > max) setSources(sources);
    // max_length 0: the mode takes no prompt (Ideogram's reframe).
    const limit = promptLimit();
    const takesPrompt = limit > 0;
    prompt.maxLength = limit;
    prompt.required = takesPrompt;
    prompt.disabled = !takesPrompt;
    if (!takesPrompt) prompt.value = '';
    prompt.placeholder = takesPrompt ? 'Describe the image' : 'This mode takes no prompt';
    promptHint.textContent = limitText();

    fields = formFields(model, operation(), mode());
    view = renderFields(fields, 'pg');
    view.fill(keep ?? carryOver(fieldsBefore, fields, typed));
    fieldsSlot.replaceChildren(view.element);
    void showMask();
  }

  modelSelect.addEventListener('change', () => {
    // The user chose: the note on the console's choice no longer applies.
    modelNote.textContent = '';
    update();
  });
  opGenerate.addEventListener('change', () => update());
  opEdit.addEventListener('change', () => update());
  modeSelect.addEventListener('change', () => update());
  fileInput.addEventListener('change', () => void chooseFiles([...(fileInput.files ?? [])]));
  // maxlength cuts a pasted text in silence: the hint says how much was left out, until the next edit.
  prompt.addEventListener('paste', (event) => {
    // A textarea keeps line breaks as one character each, whatever the clipboard carried.
    const pasted = (event.clipboardData?.getData('text') ?? '').replace(/\r\n?/g, '\n');
    const room = prompt.maxLength - (prompt.value.length - (prompt.selectionEnd - prompt.selectionStart));
    const cut = pasted.length - Math.max(0, room);
    promptHint.textContent =
      prompt.maxLength > 0 && cut > 0 ? `${limitText()} The pasted text was cut to fit: its last ${cut} character${cut === 1 ? ' was' : 's were'} left out.` : limitText();
  });
  prompt.addEventListener('input', (event) => {
    if ((event as InputEvent).inputType !== 'insertFromPaste') promptHint.textContent = limitText();
  });
  // What a refused Generate named follows the form as it is fixed (after each field's own handler).
  form.addEventListener('input', recheck);
  form.addEventListener('change', recheck);
  // Painting (a stroke ends), Undo, Clear ...: whether the mask has paint may have changed.
  maskSlot.addEventListener('pointerup', recheck);
  maskSlot.addEventListener('click', recheck);
  maskSlot.addEventListener('keyup', recheck);
  for (const type of ['dragenter', 'dragover'] as const) {
    dropZone.addEventListener(type, (event) => {
      event.preventDefault();
      dropZone.classList.add('dragging');
    });
  }
  dropZone.addEventListener('dragleave', () => dropZone.classList.remove('dragging'));
  dropZone.addEventListener('drop', (event) => {
    event.preventDefault();
    dropZone.classList.remove('dragging');
    void chooseFiles([...(event.dataTransfer?.files ?? [])]);
  });

  /** Fills the form with a request's settings (a result's, or a gallery image's). */
  function applySettings(settings: ReuseSettings): void {
    const model = models.find((m) => m.id === settings.model);
    if (!model) {
      toast(`This key may not use ${settings.model} (or the gateway no longer serves it).`, 'error');
      return;
    }
    modelSelect.value = model.id;
    const parameters = settings.parameters ?? {};
    const wantedMode = typeof parameters.mode === 'string' ? parameters.mode : undefined;
    const edit = (wantedMode !== undefined || !model.operations.includes('generate')) && model.operations.includes('edit');
    (edit ? opEdit : opGenerate).checked = true;
    if (wantedMode && editModes(model).includes(wantedMode)) {
      update({});
      modeSelect.value = wantedMode;
    }
    update({});
    view.fill(rawFromParameters(fields, parameters));
    if (typeof settings.prompt === 'string') prompt.value = settings.prompt;
    prompt.focus();
    // Filled by script, no input event: what a refused Generate named follows here too.
    recheck();
  }

  /**
   * Switches to editing `blob`: with the model that made it (`madeBy`) where that model edits, else
   * with the first model of the catalogue that does, saying so under the model.
   */
  async function editImage(blob: Blob, madeBy?: string): Promise<void> {
    const own = models.find((m) => m.id === madeBy) ?? (madeBy === undefined ? currentModel() : undefined);
    let editor = own;
    let note = '';
    if (!own?.operations.includes('edit')) {
      editor = models.find((m) => m.operations.includes('edit'));
      if (!editor) {
        toast('None of the models this key may use edits images.', 'error');
        return;
      }
      note = own ? `${own.id} does not edit images, so ${editor.id} is selected.` : `${madeBy} is not available to this key, so ${editor.id} is selected.`;
    }
    modelSelect.value = editor!.id;
    opEdit.checked = true;
    update();
    modelNote.textContent = note;
    // chooseFiles counts this choice as the next one; a later one made while it reads wins.
    const thisChoice = choosing + 1;
    await chooseFiles([blob]);
    // The picker shows the image as chosen, not "No file chosen" beside its preview (no change event fires).
    if (thisChoice === choosing) {
      try {
        const chosen = new DataTransfer();
        chosen.items.add(new File([blob], `image-to-edit.${blob.type.split('/')[1] ?? 'png'}`, { type: blob.type }));
        fileInput.files = chosen.files;
      } catch {
        // A browser without a settable FileList keeps its "No file chosen": the preview still shows the image.
      }
    }
    editSection.scrollIntoView?.({ block: 'start', behavior: 'smooth' });
  }

  async function fetchImage(url: string): Promise<Blob> {
    const res = await fetch(url, { credentials: 'same-origin' });
    if (!res.ok) throw new RequestFailed({ status: res.status, message: `the image could not be fetched (${res.status})` });
    return res.blob();
  }

  // ---- running a request
  function resultCards(result: GenerationResult, ms: number, settings: ReuseSettings): HTMLElement[] {
    const cost = result.usage?.estimated_cost_usd;
    const each = cost === null || cost === undefined || result.images.length === 0 ? null : cost / result.images.length;
    return result.images.map((image, i) => {
      const src = image.url ?? (image.b64_json ? `data:${image.mime_type ?? 'image/png'};base64,${image.b64_json}` : '');
      const ext = (image.mime_type ?? 'image/png').split('/')[1] ?? 'png';
      const editButton = h('button', { type: 'button' }, 'Edit this image');
      editButton.addEventListener('click', () => {
        editButton.disabled = true;
        fetchImage(src)
          .then((blob) => editImage(blob, result.model))
          .catch((err: Error) => toast(`Cannot edit it: ${err.message}`, 'error'))
          .finally(() => (editButton.disabled = false));
      });
      // Only what is known: no "seed —" where the model reports none.
      const facts = [
        image.seed !== undefined && image.seed !== null ? `seed ${image.seed}` : '',
        formatDuration(ms),
        // A price the catalogue does not know (dall-e-3's depends on size and quality) is said in words, not a dash.
        each === null ? 'cost unknown' : formatUsd(each),
        image.width && image.height ? `${image.width}×${image.height}` : '',
      ].filter(Boolean);
      const img = h('img', { src, alt: settings.prompt ? `${result.model}: ${settings.prompt}` : result.model, loading: 'lazy', width: image.width, height: image.height });
      // Scaled to the card's width, its proportions kept.
      img.style.setProperty('width', '100%');
      img.style.setProperty('height', 'auto');
      img.style.setProperty('display', 'block');
      const card = h(
        'figure',
        { class: 'card result-card', 'data-seed': image.seed ?? '' },
        img,
        h('figcaption', null, h('p', { class: 'result-facts' }, facts.join(' · ')), h('p', { class: 'muted result-model' }, captionOf(result.model, settings.prompt))),
        h(
          'div',
          { class: 'row result-actions' },
          h('button', { type: 'button', onclick: () => applySettings(settings) }, 'Reuse settings'),
          editButton,
          src ? h('a', { href: src, download: `${result.id}-${i + 1}.${ext === 'jpeg' ? 'jpg' : ext}`, class: 'button' }, 'Download') : null,
        ),
      );
      card.style.setProperty('margin', '0');
      return card;
    });
  }

  /** Follows a 202's job until it ends, showing its status. */
  async function followJob(id: string, show: (text: string) => void): Promise<GenerationResult> {
    for (;;) {
      const res = await ctx.api(`/v1/jobs/${encodeURIComponent(id)}`);
      if (!res.ok) throw new RequestFailed(await failureOfAnswer(res));
      const job = (await res.json()) as { status: string; result?: GenerationResult; error?: unknown };
      if (job.status === 'succeeded' && job.result) return job.result;
      if (job.status === 'failed') throw new RequestFailed(failureOf(job.error ?? { message: 'The job failed.' }));
      show(job.status === 'queued' ? 'Queued…' : 'Running…');
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  /** Reads the answer: an event stream (progress as it comes), a 202 job, or the result itself. */
  async function outcome(res: Response, show: (text: string) => void): Promise<GenerationResult> {
    if (!res.ok) throw new RequestFailed(await failureOfAnswer(res));
    const type = res.headers.get('content-type') ?? '';
    if (type.startsWith('text/event-stream') && res.body) {
      for await (const { event, data } of readEventStream(res.body)) {
        let parsed: Record<string, unknown> = {};
        try {
          parsed = JSON.parse(data) as Record<string, unknown>;
        } catch {
          // a comment-like or empty event
        }
        const text = progressText(event, parsed);
        if (text) show(text);
        if (event === 'succeeded') return parsed as unknown as GenerationResult;
        if (event === 'failed' || event === 'error') throw new RequestFailed(failureOf(parsed));
      }
      throw new RequestFailed({ message: 'The stream ended without a result.' });
    }
    const body = (await res.json()) as GenerationResult & { status_url?: string; status?: string };
    if (res.status === 202 && body.id) return followJob(body.id, show);
    return body;
  }

  /**
   * Whether a request is on its way: one at a time, so a second click (or Enter) while the first
   * runs is not a second, paid, generation. The button says so by being disabled.
   */
  let running = false;
  /** The button that had focus when it was disabled (the browser then leaves focus on nothing). */
  let focusFrom: HTMLButtonElement | undefined;
  /**
   * `placed` is the card a Retry's run left in place of the one its button was on: focus goes to
   * that card's Retry if it failed again, else to its first action, not to nothing.
   */
  function setRunning(value: boolean, placed?: HTMLElement): void {
    running = value;
    if (value) {
      const active = document.activeElement;
      focusFrom = active instanceof HTMLButtonElement && (active === generateButton || active.classList.contains('result-retry')) ? active : undefined;
    }
    generateButton.disabled = value;
    for (const retry of results.querySelectorAll<HTMLButtonElement>('.result-retry')) retry.disabled = value;
    if (value) generateButton.setAttribute('aria-busy', 'true');
    else generateButton.removeAttribute('aria-busy');
    // Back where the user was, unless they moved on meanwhile (or the page is not shown).
    if (!value && focusFrom) {
      const active = document.activeElement;
      const target = focusFrom.isConnected ? focusFrom : placed?.querySelector<HTMLElement>('.result-retry, .result-actions button, .result-actions a');
      if ((active === null || active === document.body) && target?.isConnected) target.focus();
      focusFrom = undefined;
    }
  }

  /** What Generate would refuse now: the fields the selected model declares, the prompt, the image and the mask. */
  function formProblems(): { values: FormValues; problems: string[]; promptWrong: boolean } {
    const model = currentModel();
    const op = operation();
    // Only the fields the selected model declares for this operation and mode are read, so nothing else is ever sent.
    const values = readValues(formFields(model, op, mode()), view.read());
    const problems = values.errors.map((e) => e.message);
    const limit = promptLimit();
    const needsPrompt = limit > 0;
    const empty = needsPrompt && !prompt.value.trim();
    // maxlength stops typing, not a longer prompt kept from a model that takes more.
    const tooLong = needsPrompt && !empty && prompt.value.length > limit;
    if (empty) problems.unshift('Prompt must not be empty.');
    else if (tooLong) problems.unshift(`Prompt must be at most ${limit} characters for ${model.id} (it has ${prompt.value.length}).`);
    if (op === 'edit' && sources.length === 0) problems.push('Image: choose the image to edit.');
    if (op === 'edit' && schema()?.mask?.required && !maskEditor?.hasPaint()) problems.push('Mask: this mode needs a mask; paint the area to change.');
    return { values, problems, promptWrong: empty || tooLong };
  }

  /** Whether the form shows what a refused Generate named: it then follows each change, and goes once all is fixed. */
  let problemsShown = false;
  function showProblems(): string[] {
    const { values, problems } = formProblems();
    view.markInvalid(values.errors.map((e) => e.key));
    formError.textContent = problems.join(' ');
    problemsShown = problems.length > 0;
    return problems;
  }
  function recheck(): void {
    if (problemsShown) showProblems();
  }

  async function submit(): Promise<void> {
    if (running) return;
    if (showProblems().length > 0) {
      if (formProblems().promptWrong) prompt.focus();
      return;
    }
    const { values } = formProblems();
    const model = currentModel();
    const op = operation();
    const promptText = prompt.value;
    const settings = settingsOf(model.id, promptText, values, mode());
    setRunning(true);
    try {
      await send(model, op, promptText, values, settings);
    } finally {
      setRunning(false);
    }
  }

  async function send(model: ModelInfo, op: Operation, promptText: string, values: FormValues, settings: ReuseSettings): Promise<void> {
    let init: RequestInit;
    if (op === 'generate') {
      init = { method: 'POST', headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' }, body: JSON.stringify(generateBody(model.id, promptText, values)) };
    } else {
      const body = new FormData();
      for (const [name, value] of editFields(model.id, promptText, values, mode())) body.append(name, value);
      sources.forEach((blob, i) => body.append(i === 0 ? 'image' : 'image[]', blob, `image-${i + 1}.${(blob.type.split('/')[1] ?? 'png').replace('jpeg', 'jpg')}`));
      if (maskEditor?.hasPaint()) body.append('mask', await maskEditor.toBlob(), 'mask.png');
      init = { method: 'POST', headers: { Accept: 'text/event-stream' }, body };
    }
    await run({ path: op === 'generate' ? '/v1/generate' : '/v1/edit', init, settings });
  }

  /** One request as sent: what Retry sends again (a FormData body can be sent more than once). */
  interface SentRequest {
    path: string;
    init: RequestInit;
    settings: ReuseSettings;
  }

  /**
   * Sends a request, showing it as a card that runs (its status and a ticking clock), then its
   * images or what went wrong. Returns the first card it left.
   */
  async function run(request: SentRequest, replacing?: HTMLElement): Promise<HTMLElement> {
    shown(emptyResults, false);
    const status = h('p', { class: 'result-status', role: 'status' }, 'Sending…');
    const elapsed = h('p', { class: 'muted result-elapsed' });
    const pending = h('div', { class: 'card result-pending', 'aria-busy': 'true' }, h('p', { class: 'muted' }, captionOf(request.settings.model, request.settings.prompt)), status, elapsed);
    if (replacing) replacing.replaceWith(pending);
    else results.prepend(pending);
    const started = performance.now();
    const tick = () => (elapsed.textContent = elapsedText(performance.now() - started));
    tick();
    const clock = setInterval(tick, 100);
    try {
      const result = await outcome(await ctx.api(request.path, request.init), (text) => (status.textContent = text));
      const cards = resultCards(result, performance.now() - started, request.settings);
      pending.replaceWith(...cards);
      return cards[0] ?? results;
    } catch (err) {
      const failure: Failure = err instanceof RequestFailed ? err.failure : { code: 'network', message: (err as Error).message };
      const card = failedCard(request, failure, performance.now() - started);
      pending.replaceWith(card);
      return card;
    } finally {
      clearInterval(clock);
    }
  }

  /** A failed request: what happened, the problems (each field and what it allows), and Retry / Edit settings. */
  function failedCard(request: SentRequest, failure: Failure, ms: number): HTMLElement {
    const retry = h('button', { type: 'button', class: 'result-retry', disabled: running }, 'Retry');
    const card = h(
      'div',
      { class: 'card result-failed' },
      h('h3', { class: 'result-headline', role: 'alert' }, failureHeadline(failure)),
      h('p', { class: 'muted result-model' }, captionOf(request.settings.model, request.settings.prompt)),
      h('ul', { class: 'result-problems form-error' }, problemLines(failure).map((line) => h('li', null, line))),
      // How long it took only where that tells something (an upstream that gave up after a while), never "0.0 s".
      ms >= 1000 ? h('p', { class: 'muted result-elapsed' }, `Failed after ${formatDuration(ms)}`) : null,
      h('div', { class: 'row result-actions' }, retry, h('button', { type: 'button', onclick: () => editSettings(request.settings, failure) }, 'Edit settings')),
    );
    retry.addEventListener('click', () => {
      if (running) return;
      setRunning(true);
      void run(request, card).then(
        (placed) => setRunning(false, placed),
        () => setRunning(false),
      );
    });
    return card;
  }

  /** Back to the form with a failed request's settings, the fields the gateway named marked. */
  function editSettings(settings: ReuseSettings, failure: Failure): void {
    applySettings(settings);
    const named = (failure.details ?? []).flatMap((d) => (d.field ? [d.field] : []));
    view.markInvalid(fields.filter((f) => named.includes(f.key)).map((f) => f.key));
  }

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    void submit();
  });

  /** What the gallery hands over: settings to reuse, or an image to edit. */
  async function receive(given: unknown): Promise<void> {
    const handed = (given ?? {}) as PlaygroundState;
    if (handed.reuse) applySettings(handed.reuse);
    if (handed.editImage) {
      try {
        await editImage(await fetchImage(handed.editImage.url), handed.editImage.model);
      } catch (err) {
        toast(`The image could not be loaded for editing: ${(err as Error).message}`, 'error');
      }
    }
    recheck();
  }

  update({});
  await receive(state);
  return { receive };
}
