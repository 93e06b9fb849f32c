/**
 * Draws the playground's generated fields (param-form.ts describes them): a labelled control per
 * field with what it allows under it; the model's options in a collapsible group.
 */
import { hintFor, placeholderFor, type FieldDescriptor } from './param-form.js';
import { h } from './ui.js';

export interface RenderedFields {
  element: HTMLElement;
  /** The texts entered, by field key. */
  read(): Record<string, string>;
  /** Puts texts in (by field key); fields not named are left empty (the model's default). */
  fill(raw: Readonly<Record<string, string>>): void;
  /** Marks the fields named invalid (aria-invalid) and focuses the first; an empty list clears the marks. */
  markInvalid(keys: readonly string[]): void;
}

type Control = HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement;

function controlFor(field: FieldDescriptor, id: string): { control: Control; extra?: HTMLElement } {
  const describedBy = `${id}-help`;
  switch (field.control) {
    case 'select': {
      const select = h('select', { id, name: field.key, 'aria-describedby': describedBy });
      // The empty choice: the model's default, or, where there is none, a prompt to choose.
      for (const choice of field.choices ?? []) select.appendChild(h('option', { value: choice }, choice === '' ? (field.required ? placeholderFor(field) : 'Default') : choice));
      return { control: select };
    }
    case 'combo': {
      const listId = `${id}-list`;
      const input = h('input', { id, name: field.key, type: 'text', list: listId, placeholder: field.placeholder, autocomplete: 'off', 'aria-describedby': describedBy });
      const list = h('datalist', { id: listId }, (field.choices ?? []).map((c) => h('option', { value: c })));
      return { control: input, extra: list };
    }
    case 'number':
      return {
        control: h('input', {
          id,
          name: field.key,
          type: 'number',
          inputmode: field.valueType === 'integer' ? 'numeric' : 'decimal',
          min: field.min,
          max: field.max,
          step: field.step ?? 'any',
          placeholder: 'Default',
          'aria-describedby': describedBy,
        }),
      };
    case 'textarea':
    case 'json':
      return {
        control: h('textarea', {
          id,
          name: field.key,
          rows: field.control === 'json' ? 2 : 3,
          maxlength: field.maxLength,
          placeholder: field.placeholder,
          spellcheck: field.control === 'json' ? 'false' : undefined,
          'aria-describedby': describedBy,
        }),
      };
    default:
      return {
        control: h('input', { id, name: field.key, type: 'text', maxlength: field.maxLength, placeholder: field.placeholder, autocomplete: 'off', 'aria-describedby': describedBy }),
      };
  }
}

/** The controls for `fields`; ids start with `idPrefix` so that two forms never share one. */
export function renderFields(fields: readonly FieldDescriptor[], idPrefix: string): RenderedFields {
  const controls = new Map<string, Control>();
  const block = (field: FieldDescriptor) => {
    const id = `${idPrefix}-${field.key.replace(/[^\w-]/g, '_')}`;
    const { control, extra } = controlFor(field, id);
    if (field.required) control.setAttribute('aria-required', 'true');
    controls.set(field.key, control);
    return h('div', { class: 'field' }, h('label', { for: id }, field.label), control, extra, h('p', { id: `${id}-help`, class: 'hint' }, hintFor(field)));
  };
  const parameters = fields.filter((f) => f.group === 'parameters').map(block);
  const options = fields.filter((f) => f.group === 'options').map(block);
  const element = h(
    'div',
    { class: 'param-fields' },
    h('div', { class: 'grid' }, parameters),
    options.length > 0 ? h('details', { class: 'model-options' }, h('summary', null, `Model options (${options.length})`), h('div', { class: 'grid' }, options)) : null,
  );
  return {
    element,
    read: () => Object.fromEntries([...controls].map(([key, control]) => [key, control.value])),
    fill(raw) {
      for (const [key, control] of controls) control.value = Object.hasOwn(raw, key) ? raw[key]! : '';
      // A filled option is worth showing.
      if (Object.keys(raw).some((k) => k.startsWith('options.') && raw[k] !== '')) element.querySelector('details')?.setAttribute('open', '');
    },
    markInvalid(keys) {
      for (const [key, control] of controls) {
        if (keys.includes(key)) control.setAttribute('aria-invalid', 'true');
        else control.removeAttribute('aria-invalid');
      }
      const first = keys.map((k) => controls.get(k)).find(Boolean);
      if (first) {
        first.closest('details')?.setAttribute('open', '');
        first.focus();
      }
    },
  };
}
