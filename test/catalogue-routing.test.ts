/**
 * Every catalogue model, every operation and edit mode it offers: one client request through the
 * gateway, and the exact request the upstream simulator received. The expected upstream bodies are
 * written out from the AiHubMix documents (../shared/upstream-docs), never computed by the
 * catalogue's own mapping code, so a wrong mapping in the data fails here.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import sharp from 'sharp';
import { MODELS } from '../src/catalogue/models.js';
import type { RecordedRequest } from '../src/simulator/upstream-simulator.js';
import {
  CLIENT_KEY,
  UPSTREAM_KEY,
  makeHalfTransparentMask,
  makePng,
  multipartBody,
  startHarness,
  type Harness,
} from './harness.js';

const PROMPT = 'A deer drinking in the lake, sakura petals falling';

const SOURCE = await makePng(32, 32, { r: 200, g: 40, b: 40 });
const SECOND = await makePng(32, 32, { r: 40, g: 200, b: 40 });
const THIRD = await makePng(32, 32, { r: 40, g: 40, b: 200 });
/** OpenAI convention, as clients send it: transparent left half = change, opaque right half = keep. */
const MASK = await makeHalfTransparentMask(32, 32);

const dataUrl = (png: Buffer) => `data:image/png;base64,${png.toString('base64')}`;
const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

const COLOR_PALETTE = [{ hex: '#C0392B' }, { hex: '#F1C40F' }, { hex: '#2C3E50' }];

type Operation = 'generate' | 'edit' | 'remix' | 'replace_background' | 'reframe' | 'upscale';

interface ExpectedUpstream {
  path: string;
  /** bearer: `Authorization: Bearer <key>` (predictions, OpenAI-compatible); api-key: `Api-Key: <key>` (Ideogram native). */
  auth: 'bearer' | 'api-key';
  /** The whole JSON body. */
  json?: Record<string, unknown>;
  /** The whole set of multipart text fields (legacy Ideogram's `image_request` JSON string shown parsed). */
  fields?: Record<string, unknown>;
  /** The multipart file fields, in order. */
  files?: string[];
  /** Asynchronous: the submission answers with a task, then GET /v1/tasks/<taskId> is polled until Ready. */
  polled?: true;
}

interface RoutingCase {
  model: string;
  op: Operation;
  /** generate: the JSON body; edit: the multipart text fields (options as a JSON string). `model` and `prompt` are added. */
  request: Record<string, unknown>;
  /** The route takes no prompt (Ideogram's reframe): none is sent. */
  noPrompt?: true;
  /** Edits only: the image files, and the mask. */
  images?: Buffer[];
  mask?: Buffer;
  /** How many images the gateway must answer with (the requested n). */
  expectImages: number;
  upstream: ExpectedUpstream;
}

const options = (value: Record<string, unknown>) => JSON.stringify(value);

const CASES: RoutingCase[] = [
  // ------------------------------------------------------------ OpenAI
  {
    model: 'gpt-image-1',
    op: 'generate',
    request: { n: 2, size: '1024x1024', quality: 'high', output_format: 'png', background: 'auto', options: { moderation: 'low' } },
    expectImages: 2,
    upstream: {
      path: '/v1/models/opanai/gpt-image-1/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, n: 2, size: '1024x1024', quality: 'high', output_format: 'png', background: 'auto', moderation: 'low' } },
    },
  },
  {
    model: 'gpt-image-1',
    op: 'edit',
    request: {
      n: '2',
      size: '1024x1536',
      quality: 'medium',
      output_format: 'webp',
      background: 'opaque',
      options: options({ input_fidelity: 'high', output_compression: 80 }),
    },
    images: [SOURCE],
    mask: MASK,
    expectImages: 2,
    upstream: {
      path: '/v1/images/edits',
      auth: 'bearer',
      fields: {
        model: 'gpt-image-1',
        prompt: PROMPT,
        n: '2',
        size: '1024x1536',
        quality: 'medium',
        output_format: 'webp',
        background: 'opaque',
        input_fidelity: 'high',
        output_compression: '80',
      },
      files: ['image', 'mask'],
    },
  },
  {
    model: 'gpt-image-1.5',
    op: 'generate',
    request: {
      n: 1,
      size: '1536x1024',
      quality: 'medium',
      output_format: 'jpeg',
      background: 'opaque',
      options: { moderation: 'auto', output_compression: 70 },
    },
    expectImages: 1,
    upstream: {
      path: '/v1/models/openai/gpt-image-1.5/predictions',
      auth: 'bearer',
      json: {
        input: {
          prompt: PROMPT,
          n: 1,
          size: '1536x1024',
          quality: 'medium',
          output_format: 'jpeg',
          background: 'opaque',
          moderation: 'auto',
          output_compression: 70,
        },
      },
    },
  },
  {
    model: 'gpt-image-1.5',
    op: 'edit',
    request: { size: 'auto', quality: 'low', output_format: 'png', background: 'transparent', options: options({ input_fidelity: 'low' }) },
    images: [SOURCE],
    expectImages: 1,
    upstream: {
      path: '/v1/images/edits',
      auth: 'bearer',
      fields: {
        model: 'gpt-image-1.5',
        prompt: PROMPT,
        size: 'auto',
        quality: 'low',
        output_format: 'png',
        background: 'transparent',
        input_fidelity: 'low',
      },
      files: ['image'],
    },
  },
  {
    model: 'gpt-image-2',
    op: 'generate',
    request: { n: 3, size: '1536x864', quality: 'low', output_format: 'webp', background: 'auto', options: { moderation: 'low' } },
    expectImages: 3,
    upstream: {
      path: '/v1/models/openai/gpt-image-2/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, n: 3, size: '1536x864', quality: 'low', output_format: 'webp', background: 'auto', moderation: 'low' } },
    },
  },
  {
    model: 'gpt-image-2',
    op: 'edit',
    request: { n: '1', size: '2048x1152', quality: 'high' },
    images: [SOURCE, SECOND],
    expectImages: 1,
    upstream: {
      path: '/v1/images/edits',
      auth: 'bearer',
      fields: { model: 'gpt-image-2', prompt: PROMPT, n: '1', size: '2048x1152', quality: 'high' },
      files: ['image[]', 'image[]'],
    },
  },
  {
    model: 'dall-e-3',
    op: 'generate',
    request: { n: 1, size: '1792x1024', quality: 'hd', style: 'natural' },
    expectImages: 1,
    upstream: {
      path: '/v1/models/opanai/dall-e-3/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, n: 1, size: '1792x1024', quality: 'hd', style: 'natural' } },
    },
  },

  // ------------------------------------------------------------ Google Imagen: n is written numberOfImages
  {
    model: 'imagen-4.0-ultra-generate-001',
    op: 'generate',
    request: { n: 1 },
    expectImages: 1,
    upstream: {
      path: '/v1/models/google/imagen-4.0-ultra-generate-001/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, numberOfImages: 1 } },
    },
  },
  {
    model: 'imagen-4.0-generate-001',
    op: 'generate',
    request: { n: 4 },
    expectImages: 4,
    upstream: {
      path: '/v1/models/google/imagen-4.0-generate-001/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, numberOfImages: 4 } },
    },
  },
  {
    model: 'imagen-4.0-fast-generate-001',
    op: 'generate',
    request: { n: 2 },
    expectImages: 2,
    upstream: {
      path: '/v1/models/google/imagen-4.0-fast-generate-001/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, numberOfImages: 2 } },
    },
  },
  {
    model: 'imagen-4.0-fast-generate-preview-06-06',
    op: 'generate',
    request: { n: 3 },
    expectImages: 3,
    upstream: {
      path: '/v1/models/google/imagen-4.0-fast-generate-preview-06-06/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, numberOfImages: 3 } },
    },
  },
  {
    model: 'imagen-3.0-generate-002',
    op: 'generate',
    request: { n: 1 },
    expectImages: 1,
    upstream: {
      path: '/v1/models/google/imagen-3.0-generate-002/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, numberOfImages: 1 } },
    },
  },
  {
    model: 'imagen-4.0-ultra-generate-preview-06-06',
    op: 'generate',
    request: { n: 1 },
    expectImages: 1,
    upstream: {
      path: '/v1/models/google/imagen-4.0-ultra-generate-preview-06-06/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, numberOfImages: 1 } },
    },
  },
  {
    model: 'imagen-4.0-generate-preview-06-06',
    op: 'generate',
    request: { n: 2 },
    expectImages: 2,
    upstream: {
      path: '/v1/models/google/imagen-4.0-generate-preview-06-06/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, numberOfImages: 2 } },
    },
  },
  {
    model: 'imagen-4.0-ultra-generate-exp-05-20',
    op: 'generate',
    request: { n: 1 },
    expectImages: 1,
    upstream: {
      path: '/v1/models/google/imagen-4.0-ultra-generate-exp-05-20/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, numberOfImages: 1 } },
    },
  },
  {
    model: 'imagen-4.0-generate-preview-05-20',
    op: 'generate',
    request: { n: 4 },
    expectImages: 4,
    upstream: {
      path: '/v1/models/google/imagen-4.0-generate-preview-05-20/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, numberOfImages: 4 } },
    },
  },

  // ------------------------------------------------------------ Black Forest Labs Flux
  {
    model: 'FLUX-1.1-pro',
    op: 'generate',
    request: { size: '1024x768', output_format: 'png', seed: 1, options: { prompt_upsampling: true, safety_tolerance: 6 } },
    expectImages: 1,
    upstream: {
      path: '/v1/models/bfl/FLUX-1.1-pro/predictions',
      auth: 'bearer',
      // prompt_upsampling, safety_tolerance and seed go inside extra_body (001).
      json: {
        input: { prompt: PROMPT, size: '1024x768', output_format: 'png', extra_body: { seed: 1, prompt_upsampling: true, safety_tolerance: 6 } },
      },
    },
  },
  {
    model: 'flux-kontext-max',
    op: 'generate',
    request: { aspect_ratio: '2:3', seed: 7, output_format: 'png', options: { safety_tolerance: 6, prompt_upsampling: true } },
    expectImages: 1,
    upstream: {
      path: '/v1/models/bfl/flux-kontext-max/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, aspect_ratio: '2:3', seed: 7, output_format: 'png', safety_tolerance: 6, prompt_upsampling: true } },
      polled: true,
    },
  },
  {
    model: 'flux-kontext-max',
    op: 'edit',
    request: { aspect_ratio: '1:1', seed: '8', options: options({ safety_tolerance: 2 }) },
    images: [SOURCE, SECOND],
    expectImages: 1,
    upstream: {
      path: '/v1/models/bfl/flux-kontext-max/predictions',
      auth: 'bearer',
      // Several images each in their own field, in order (Black Forest Labs' FluxKontextProInputs).
      json: {
        input: {
          prompt: PROMPT,
          aspect_ratio: '1:1',
          seed: 8,
          safety_tolerance: 2,
          input_image: SOURCE.toString('base64'),
          input_image_2: SECOND.toString('base64'),
        },
      },
      polled: true,
    },
  },
  {
    model: 'flux-kontext-pro',
    op: 'generate',
    request: { aspect_ratio: '21:9', output_format: 'jpeg', options: { safety_tolerance: 0 } },
    expectImages: 1,
    upstream: {
      path: '/v1/models/bfl/flux-kontext-pro/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, aspect_ratio: '21:9', output_format: 'jpeg', safety_tolerance: 0 } },
      polled: true,
    },
  },
  {
    model: 'flux-kontext-pro',
    op: 'edit',
    request: { aspect_ratio: '9:21', seed: '99', output_format: 'png' },
    images: [SOURCE],
    expectImages: 1,
    upstream: {
      path: '/v1/models/bfl/flux-kontext-pro/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, aspect_ratio: '9:21', seed: 99, output_format: 'png', input_image: SOURCE.toString('base64') } },
      polled: true,
    },
  },
  {
    model: 'flux-2-pro',
    op: 'generate',
    request: { size: '1920x1088', seed: 3, options: { safety_tolerance: 5, disable_pup: true } },
    expectImages: 1,
    upstream: {
      path: '/v1/models/bfl/flux-2-pro/predictions',
      auth: 'bearer',
      // FLUX.2 takes width and height, not aspect_ratio (Black Forest Labs' Flux2Inputs).
      json: { input: { prompt: PROMPT, width: 1920, height: 1088, seed: 3, safety_tolerance: 5, disable_pup: true } },
      polled: true,
    },
  },
  {
    model: 'flux-2-pro',
    op: 'edit',
    request: { output_format: 'jpeg', options: options({ safety_tolerance: 1 }) },
    images: [SOURCE, SECOND, THIRD],
    expectImages: 1,
    upstream: {
      path: '/v1/models/bfl/flux-2-pro/predictions',
      auth: 'bearer',
      json: {
        input: {
          prompt: PROMPT,
          output_format: 'jpeg',
          safety_tolerance: 1,
          input_image: SOURCE.toString('base64'),
          input_image_2: SECOND.toString('base64'),
          input_image_3: THIRD.toString('base64'),
        },
      },
      polled: true,
    },
  },
  {
    model: 'flux-2-flex',
    op: 'generate',
    request: { size: '1024x768', options: { prompt_upsampling: false, safety_tolerance: 3, guidance: 4.5, steps: 28 } },
    expectImages: 1,
    upstream: {
      path: '/v1/models/bfl/flux-2-flex/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, width: 1024, height: 768, prompt_upsampling: false, safety_tolerance: 3, guidance: 4.5, steps: 28 } },
      polled: true,
    },
  },
  {
    model: 'flux-2-flex',
    op: 'edit',
    request: { size: '768x1024', seed: '12' },
    images: [SOURCE],
    expectImages: 1,
    upstream: {
      path: '/v1/models/bfl/flux-2-flex/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, width: 768, height: 1024, seed: 12, input_image: SOURCE.toString('base64') } },
      polled: true,
    },
  },
  {
    model: 'FLUX.1-Kontext-pro',
    op: 'generate',
    request: { aspect_ratio: '16:9', seed: 5, output_format: 'png', options: { safety_tolerance: 4 } },
    expectImages: 1,
    upstream: {
      path: '/v1/models/bfl/FLUX.1-Kontext-pro/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, aspect_ratio: '16:9', seed: 5, output_format: 'png', safety_tolerance: 4 } },
    },
  },
  {
    model: 'FLUX.1-Kontext-pro',
    op: 'edit',
    request: { aspect_ratio: '3:2', options: options({ prompt_upsampling: true }) },
    images: [SOURCE],
    expectImages: 1,
    upstream: {
      path: '/v1/models/bfl/FLUX.1-Kontext-pro/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, aspect_ratio: '3:2', prompt_upsampling: true, input_image: SOURCE.toString('base64') } },
    },
  },

  // ------------------------------------------------------------ Ideogram 3.0, native multipart: W:H -> WxH, n -> num_images
  {
    model: 'ideogram-v3',
    op: 'generate',
    request: {
      n: 2,
      aspect_ratio: '16:9',
      style: 'REALISTIC',
      negative_prompt: 'blurry, watermark',
      options: { rendering_speed: 'TURBO', magic_prompt: 'OFF' },
    },
    expectImages: 2,
    upstream: {
      path: '/ideogram/v1/ideogram-v3/generate',
      auth: 'api-key',
      fields: {
        prompt: PROMPT,
        num_images: '2',
        aspect_ratio: '16x9',
        style_type: 'REALISTIC',
        negative_prompt: 'blurry, watermark',
        rendering_speed: 'TURBO',
        magic_prompt: 'OFF',
      },
      files: [],
    },
  },
  {
    model: 'ideogram-v3',
    op: 'edit',
    // No mode: a mask makes it an edit. No aspect_ratio or negative_prompt: Ideogram's edit schema has
    // neither (AiHubMix's document lists them; the vendor spec decides), and the gateway refuses them.
    request: {
      n: '1',
      seed: '42',
      style: 'DESIGN',
      options: options({ rendering_speed: 'QUALITY', magic_prompt: 'AUTO' }),
    },
    images: [SOURCE],
    mask: MASK,
    expectImages: 1,
    upstream: {
      path: '/ideogram/v1/ideogram-v3/edit',
      auth: 'api-key',
      fields: {
        prompt: PROMPT,
        num_images: '1',
        seed: '42',
        style_type: 'DESIGN',
        rendering_speed: 'QUALITY',
        magic_prompt: 'AUTO',
      },
      files: ['image', 'mask'],
    },
  },
  {
    model: 'ideogram-v3',
    op: 'remix',
    // No mode and no mask: the model's image-to-image, remix.
    request: { n: '3', aspect_ratio: '9:16', style: 'AUTO', options: options({ image_weight: 60, rendering_speed: 'DEFAULT' }) },
    images: [SOURCE],
    expectImages: 3,
    upstream: {
      path: '/ideogram/v1/ideogram-v3/remix',
      auth: 'api-key',
      fields: {
        prompt: PROMPT,
        num_images: '3',
        aspect_ratio: '9x16',
        style_type: 'AUTO',
        image_weight: '60',
        rendering_speed: 'DEFAULT',
      },
      files: ['image'],
    },
  },
  {
    model: 'ideogram-v3',
    op: 'replace_background',
    // No style: Ideogram's replace-background schema has no style_type (AiHubMix's document lists it; the spec decides).
    request: { mode: 'replace_background', n: '2', seed: '1', options: options({ magic_prompt: 'ON', rendering_speed: 'TURBO' }) },
    images: [SOURCE],
    expectImages: 2,
    upstream: {
      path: '/ideogram/v1/ideogram-v3/replace-background',
      auth: 'api-key',
      fields: { prompt: PROMPT, num_images: '2', seed: '1', magic_prompt: 'ON', rendering_speed: 'TURBO' },
      files: ['image'],
    },
  },
  {
    model: 'ideogram-v3',
    op: 'reframe',
    // Ideogram's /v1/ideogram-v3/reframe (spec): no prompt; size as the required resolution.
    request: { mode: 'reframe', size: '1280x768', n: '2', seed: '7', options: options({ rendering_speed: 'QUALITY' }) },
    noPrompt: true,
    images: [SOURCE],
    expectImages: 2,
    upstream: {
      path: '/ideogram/v1/ideogram-v3/reframe',
      auth: 'api-key',
      fields: { resolution: '1280x768', num_images: '2', seed: '7', rendering_speed: 'QUALITY' },
      files: ['image'],
    },
  },

  // ------------------------------------------------------------ Ideogram legacy: {"image_request":{...}}, ASPECT_W_H
  {
    model: 'ideogram-v2',
    op: 'generate',
    request: { n: 2, aspect_ratio: '16:9', seed: 1234, negative_prompt: 'blurry', style: 'RENDER_3D', options: { magic_prompt_option: 'ON' } },
    expectImages: 2,
    upstream: {
      path: '/ideogram/generate',
      auth: 'api-key',
      json: {
        image_request: {
          model: 'V_2',
          prompt: PROMPT,
          aspect_ratio: 'ASPECT_16_9',
          num_images: 2,
          seed: 1234,
          negative_prompt: 'blurry',
          style_type: 'RENDER_3D',
          magic_prompt_option: 'ON',
        },
      },
    },
  },
  {
    model: 'ideogram-v2',
    op: 'remix',
    request: { n: '1', aspect_ratio: '10:16', options: options({ image_weight: 50, magic_prompt_option: 'ON' }) },
    images: [SOURCE],
    expectImages: 1,
    upstream: {
      path: '/ideogram/remix',
      auth: 'api-key',
      fields: {
        image_request: { model: 'V_2', prompt: PROMPT, aspect_ratio: 'ASPECT_10_16', num_images: 1, image_weight: 50, magic_prompt_option: 'ON' },
      },
      files: ['image_file'],
    },
  },
  {
    model: 'ideogram-v2',
    op: 'edit',
    request: { n: '1', seed: '5', style: 'ANIME', options: options({ magic_prompt_option: 'OFF' }) },
    images: [SOURCE],
    mask: MASK,
    expectImages: 1,
    upstream: {
      path: '/ideogram/edit',
      auth: 'api-key',
      fields: { prompt: PROMPT, model: 'V_2', num_images: '1', seed: '5', style_type: 'ANIME', magic_prompt_option: 'OFF' },
      files: ['image_file', 'mask'],
    },
  },
  {
    model: 'ideogram-v2',
    op: 'reframe',
    // Ideogram's legacy POST /reframe (spec), under /ideogram as AiHubMix's other legacy routes: flat fields,
    // no prompt, size as the required Resolution enum value (1024x768 is not among V3's resolutions).
    request: { mode: 'reframe', size: '1024x768', n: '2', seed: '7', style: 'RENDER_3D' },
    noPrompt: true,
    images: [SOURCE],
    expectImages: 2,
    upstream: {
      path: '/ideogram/reframe',
      auth: 'api-key',
      fields: { model: 'V_2', resolution: 'RESOLUTION_1024_768', num_images: '2', seed: '7', style_type: 'RENDER_3D' },
      files: ['image_file'],
    },
  },
  {
    model: 'ideogram-v2-turbo',
    op: 'generate',
    request: { n: 3, aspect_ratio: '16:10', style: 'GENERAL' },
    expectImages: 3,
    upstream: {
      path: '/ideogram/generate',
      auth: 'api-key',
      json: { image_request: { model: 'V_2_TURBO', prompt: PROMPT, aspect_ratio: 'ASPECT_16_10', num_images: 3, style_type: 'GENERAL' } },
    },
  },
  {
    model: 'ideogram-v2-turbo',
    op: 'remix',
    request: { mode: 'remix', aspect_ratio: '3:2', seed: '9', style: 'DESIGN', negative_prompt: 'text' },
    images: [SOURCE],
    expectImages: 1,
    upstream: {
      path: '/ideogram/remix',
      auth: 'api-key',
      fields: {
        image_request: { model: 'V_2_TURBO', prompt: PROMPT, aspect_ratio: 'ASPECT_3_2', seed: 9, style_type: 'DESIGN', negative_prompt: 'text' },
      },
      files: ['image_file'],
    },
  },
  {
    model: 'ideogram-v2-turbo',
    op: 'edit',
    request: { mode: 'edit', n: '2', style: 'REALISTIC' },
    images: [SOURCE],
    mask: MASK,
    expectImages: 2,
    upstream: {
      path: '/ideogram/edit',
      auth: 'api-key',
      fields: { prompt: PROMPT, model: 'V_2_TURBO', num_images: '2', style_type: 'REALISTIC' },
      files: ['image_file', 'mask'],
    },
  },
  {
    model: 'ideogram-v2-turbo',
    op: 'reframe',
    request: { mode: 'reframe', size: '1536x640' },
    noPrompt: true,
    images: [SOURCE],
    expectImages: 1,
    upstream: {
      path: '/ideogram/reframe',
      auth: 'api-key',
      fields: { model: 'V_2_TURBO', resolution: 'RESOLUTION_1536_640' },
      files: ['image_file'],
    },
  },
  {
    model: 'ideogram-v2a',
    op: 'generate',
    request: { n: 1, aspect_ratio: '1:1', seed: 77, style: 'DESIGN' },
    expectImages: 1,
    upstream: {
      path: '/ideogram/generate',
      auth: 'api-key',
      json: { image_request: { model: 'V_2A', prompt: PROMPT, aspect_ratio: 'ASPECT_1_1', num_images: 1, seed: 77, style_type: 'DESIGN' } },
    },
  },
  {
    model: 'ideogram-v2a',
    op: 'remix',
    request: { n: '2', aspect_ratio: '4:3', style: 'ANIME', options: options({ image_weight: 80 }) },
    images: [SOURCE],
    expectImages: 2,
    upstream: {
      path: '/ideogram/remix',
      auth: 'api-key',
      fields: {
        image_request: { model: 'V_2A', prompt: PROMPT, aspect_ratio: 'ASPECT_4_3', num_images: 2, style_type: 'ANIME', image_weight: 80 },
      },
      files: ['image_file'],
    },
  },
  {
    model: 'ideogram-v2a',
    op: 'reframe',
    request: { mode: 'reframe', size: '720x1280', n: '3', style: 'GENERAL' },
    noPrompt: true,
    images: [SOURCE],
    expectImages: 3,
    upstream: {
      path: '/ideogram/reframe',
      auth: 'api-key',
      fields: { model: 'V_2A', resolution: 'RESOLUTION_720_1280', num_images: '3', style_type: 'GENERAL' },
      files: ['image_file'],
    },
  },
  {
    model: 'ideogram-v2a-turbo',
    op: 'generate',
    request: { n: 4, aspect_ratio: '9:16', options: { magic_prompt_option: 'AUTO' } },
    expectImages: 4,
    upstream: {
      path: '/ideogram/generate',
      auth: 'api-key',
      json: { image_request: { model: 'V_2A_TURBO', prompt: PROMPT, aspect_ratio: 'ASPECT_9_16', num_images: 4, magic_prompt_option: 'AUTO' } },
    },
  },
  {
    model: 'ideogram-v2a-turbo',
    op: 'remix',
    request: { aspect_ratio: '3:4' },
    images: [SOURCE],
    expectImages: 1,
    upstream: {
      path: '/ideogram/remix',
      auth: 'api-key',
      fields: { image_request: { model: 'V_2A_TURBO', prompt: PROMPT, aspect_ratio: 'ASPECT_3_4' } },
      files: ['image_file'],
    },
  },
  {
    model: 'ideogram-v2a-turbo',
    op: 'reframe',
    request: { mode: 'reframe', size: '1024x1024', seed: '0' },
    noPrompt: true,
    images: [SOURCE],
    expectImages: 1,
    upstream: {
      path: '/ideogram/reframe',
      auth: 'api-key',
      fields: { model: 'V_2A_TURBO', resolution: 'RESOLUTION_1024_1024', seed: '0' },
      files: ['image_file'],
    },
  },
  {
    model: 'ideogram-v1',
    op: 'generate',
    request: { n: 2, aspect_ratio: '3:1', negative_prompt: 'dark' },
    expectImages: 2,
    upstream: {
      path: '/ideogram/generate',
      auth: 'api-key',
      json: { image_request: { model: 'V_1', prompt: PROMPT, aspect_ratio: 'ASPECT_3_1', num_images: 2, negative_prompt: 'dark' } },
    },
  },
  {
    model: 'ideogram-v1',
    op: 'remix',
    request: { aspect_ratio: '1:3', seed: '3', negative_prompt: 'noise', options: options({ image_weight: 25 }) },
    images: [SOURCE],
    expectImages: 1,
    upstream: {
      path: '/ideogram/remix',
      auth: 'api-key',
      fields: {
        image_request: { model: 'V_1', prompt: PROMPT, aspect_ratio: 'ASPECT_1_3', seed: 3, negative_prompt: 'noise', image_weight: 25 },
      },
      files: ['image_file'],
    },
  },
  {
    model: 'ideogram-v1',
    op: 'reframe',
    // V_1: no style_type (Ideogram: only V_2 and later).
    request: { mode: 'reframe', size: '512x1536', n: '2' },
    noPrompt: true,
    images: [SOURCE],
    expectImages: 2,
    upstream: {
      path: '/ideogram/reframe',
      auth: 'api-key',
      fields: { model: 'V_1', resolution: 'RESOLUTION_512_1536', num_images: '2' },
      files: ['image_file'],
    },
  },
  {
    model: 'ideogram-v1-turbo',
    op: 'generate',
    request: { n: 1, aspect_ratio: '2:3', seed: 10 },
    expectImages: 1,
    upstream: {
      path: '/ideogram/generate',
      auth: 'api-key',
      json: { image_request: { model: 'V_1_TURBO', prompt: PROMPT, aspect_ratio: 'ASPECT_2_3', num_images: 1, seed: 10 } },
    },
  },
  {
    model: 'ideogram-v1-turbo',
    op: 'remix',
    request: { n: '2', options: options({ magic_prompt_option: 'OFF' }) },
    images: [SOURCE],
    expectImages: 2,
    upstream: {
      path: '/ideogram/remix',
      auth: 'api-key',
      fields: { image_request: { model: 'V_1_TURBO', prompt: PROMPT, num_images: 2, magic_prompt_option: 'OFF' } },
      files: ['image_file'],
    },
  },
  {
    model: 'ideogram-v1-turbo',
    op: 'reframe',
    request: { mode: 'reframe', size: '1280x720', seed: '2147483647' },
    noPrompt: true,
    images: [SOURCE],
    expectImages: 1,
    upstream: {
      path: '/ideogram/reframe',
      auth: 'api-key',
      fields: { model: 'V_1_TURBO', resolution: 'RESOLUTION_1280_720', seed: '2147483647' },
      files: ['image_file'],
    },
  },

  // ------------------------------------------------------------ Ideogram upscale (POST /v1/upscale)
  {
    model: 'ideogram-upscale',
    op: 'upscale',
    request: { n: '2', seed: '9', resemblance: '70', detail: '30', options: options({ magic_prompt_option: 'AUTO' }) },
    images: [SOURCE],
    expectImages: 2,
    upstream: {
      path: '/ideogram/upscale',
      auth: 'api-key',
      fields: { image_request: { prompt: PROMPT, num_images: 2, seed: 9, resemblance: 70, detail: 30, magic_prompt_option: 'AUTO' } },
      files: ['image_file'],
    },
  },

  // ------------------------------------------------------------ Stability
  {
    model: 'Stable-Diffusion-3-5-Large',
    op: 'generate',
    request: { n: 2 },
    expectImages: 2,
    upstream: {
      path: '/v1/models/stability/Stable-Diffusion-3-5-Large/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, n: 2 } },
    },
  },

  // ------------------------------------------------------------ Alibaba Wan / Qwen, zimage: sizes W*H, images as input.images
  {
    model: 'wan2.7-image-pro',
    op: 'generate',
    request: { n: 1, size: '1536x1024', seed: 42, options: { thinking_mode: true, watermark: false, color_palette: COLOR_PALETTE } },
    expectImages: 1,
    upstream: {
      path: '/v1/models/bailian/wan2.7-image-pro/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, n: 1, size: '1536*1024', seed: 42, thinking_mode: true, watermark: false, color_palette: COLOR_PALETTE } },
    },
  },
  {
    model: 'wan2.7-image-pro',
    op: 'edit',
    request: { size: '2K', options: options({ thinking_mode: false }) },
    images: [SOURCE],
    expectImages: 1,
    upstream: {
      path: '/v1/models/bailian/wan2.7-image-pro/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, size: '2K', thinking_mode: false, images: [dataUrl(SOURCE)] } },
    },
  },
  {
    model: 'wan2.7-image',
    op: 'generate',
    request: { size: '1K', options: { watermark: true } },
    expectImages: 1,
    upstream: {
      path: '/v1/models/bailian/wan2.7-image/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, size: '1K', watermark: true } },
    },
  },
  {
    model: 'wan2.7-image',
    op: 'edit',
    request: { size: '1024x1024', seed: '8' },
    images: [SOURCE, SECOND, THIRD],
    expectImages: 1,
    upstream: {
      path: '/v1/models/bailian/wan2.7-image/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, size: '1024*1024', seed: 8, images: [dataUrl(SOURCE), dataUrl(SECOND), dataUrl(THIRD)] } },
    },
  },
  {
    model: 'wan2.6-t2i',
    op: 'generate',
    request: { n: 4, size: '1280x1440', negative_prompt: 'low quality', options: { prompt_extend: false, watermark: false } },
    expectImages: 4,
    upstream: {
      path: '/v1/models/bailian/wan2.6-t2i/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, n: 4, size: '1280*1440', negative_prompt: 'low quality', prompt_extend: false, watermark: false } },
    },
  },
  {
    model: 'qwen-image-2.0-pro',
    op: 'generate',
    request: { n: 2, size: '1024x1024', seed: 2024, negative_prompt: 'blurry' },
    expectImages: 2,
    upstream: {
      path: '/v1/models/bailian/qwen-image-2.0-pro/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, n: 2, size: '1024*1024', seed: 2024, negative_prompt: 'blurry' } },
    },
  },
  {
    model: 'qwen-image-2.0',
    op: 'generate',
    request: { n: 6, size: '2048x2048', options: { prompt_extend: true } },
    expectImages: 6,
    upstream: {
      path: '/v1/models/bailian/qwen-image-2.0/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, n: 6, size: '2048*2048', prompt_extend: true } },
    },
  },
  {
    model: 'qwen-image-max',
    op: 'generate',
    request: { n: 1, size: '1664x928' },
    expectImages: 1,
    upstream: {
      path: '/v1/models/bailian/qwen-image-max/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, n: 1, size: '1664*928' } },
    },
  },
  {
    model: 'qwen-image-plus',
    op: 'generate',
    request: { n: 3, size: '928x1664', options: { watermark: true } },
    expectImages: 3,
    upstream: {
      path: '/v1/models/bailian/qwen-image-plus/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, n: 3, size: '928*1664', watermark: true } },
    },
  },
  {
    model: 'qwen-image-edit',
    op: 'edit',
    request: { negative_prompt: 'extra fingers', options: options({ prompt_extend: false }) },
    images: [SOURCE],
    expectImages: 1,
    upstream: {
      path: '/v1/models/bailian/qwen-image-edit/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, negative_prompt: 'extra fingers', prompt_extend: false, images: [dataUrl(SOURCE)] } },
    },
  },
  {
    model: 'qwen-image-edit-plus',
    op: 'edit',
    request: { n: '2', size: '1024x1024', seed: '5' },
    images: [SOURCE, SECOND],
    expectImages: 2,
    upstream: {
      path: '/v1/models/bailian/qwen-image-edit-plus/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, n: 2, size: '1024*1024', seed: 5, images: [dataUrl(SOURCE), dataUrl(SECOND)] } },
    },
  },
  {
    model: 'qwen-image-edit-max',
    op: 'edit',
    request: { n: '3', size: '768x1024', options: options({ watermark: false }) },
    images: [SOURCE],
    expectImages: 3,
    upstream: {
      path: '/v1/models/bailian/qwen-image-edit-max/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, n: 3, size: '768*1024', watermark: false, images: [dataUrl(SOURCE)] } },
    },
  },

  // ------------------------------------------------------------ the rest
  {
    model: 'glm-image',
    op: 'generate',
    request: { size: '1280x1280', quality: 'standard' },
    expectImages: 1,
    upstream: {
      path: '/v1/models/openai/glm-image/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, size: '1280x1280', quality: 'standard' } },
    },
  },
  {
    model: 'doubao-seedream-4-0',
    op: 'generate',
    request: { size: '2K', seed: 42, options: { sequential_image_generation: 'disabled', watermark: false } },
    expectImages: 1,
    upstream: {
      path: '/v1/models/doubao/doubao-seedream-4-0/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, size: '2K', seed: 42, sequential_image_generation: 'disabled', watermark: false } },
    },
  },
  {
    model: 'doubao-seedream-4-0',
    op: 'edit',
    request: {
      size: '4K',
      options: options({ sequential_image_generation: 'auto', sequential_image_generation_options: { max_images: 1 }, watermark: true }),
    },
    images: [SOURCE, SECOND],
    expectImages: 1,
    upstream: {
      path: '/v1/models/doubao/doubao-seedream-4-0/predictions',
      auth: 'bearer',
      json: {
        input: {
          prompt: PROMPT,
          size: '4K',
          sequential_image_generation: 'auto',
          sequential_image_generation_options: { max_images: 1 },
          watermark: true,
          image: [dataUrl(SOURCE), dataUrl(SECOND)],
        },
      },
    },
  },
  {
    model: 'irag-1.0',
    op: 'generate',
    request: { n: 2, size: '1024x1024', options: { guidance: 7.5, watermark: false } },
    expectImages: 2,
    upstream: {
      path: '/v1/models/qianfan/irag-1.0/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, n: 2, size: '1024x1024', guidance: 7.5, watermark: false } },
    },
  },
  {
    model: 'irag-1.0',
    op: 'edit',
    request: { size: '768x768', options: options({ guidance: 5 }) },
    images: [SOURCE],
    expectImages: 1,
    upstream: {
      path: '/v1/models/qianfan/irag-1.0/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, size: '768x768', guidance: 5, refer_image: dataUrl(SOURCE) } },
    },
  },
  {
    model: 'ernie-irag-edit',
    op: 'edit',
    request: { n: '2', size: '1024x768', options: options({ watermark: true }) },
    images: [SOURCE],
    expectImages: 2,
    upstream: {
      path: '/v1/models/qianfan/ernie-irag-edit/predictions',
      auth: 'bearer',
      json: { input: { prompt: PROMPT, n: 2, size: '1024x768', watermark: true, refer_image: dataUrl(SOURCE) } },
    },
  },
];

// ---------------------------------------------------------------- plumbing

interface GatewayImage {
  url: string;
  mime_type: string;
}
interface GatewayReply {
  model: string;
  images: GatewayImage[];
}

let h: Harness;
beforeAll(async () => {
  // Dozens of requests from one client key: keep the per-key limit out of the way.
  h = await startHarness({ RATE_LIMIT_RPM: '100000' });
});
afterAll(async () => h.close());

async function sendGenerate(body: Record<string, unknown>) {
  return h.app.inject({ method: 'POST', url: '/v1/generate', headers: h.auth, payload: { prompt: PROMPT, ...body } });
}

async function sendEdit(fields: Record<string, unknown>, images: Buffer[], mask?: Buffer, url = '/v1/edit', noPrompt = false) {
  const textFields = Object.fromEntries(Object.entries({ ...(noPrompt ? {} : { prompt: PROMPT }), ...fields }).map(([k, v]) => [k, String(v)]));
  const files = images.map((bytes, i) => ({ field: 'image', filename: `source-${i + 1}.png`, bytes }));
  if (mask) files.push({ field: 'mask', filename: 'mask.png', bytes: mask });
  const { payload, headers } = multipartBody(textFields, files);
  return h.app.inject({ method: 'POST', url, headers: { ...h.auth, ...headers }, payload });
}

function send(c: RoutingCase, model = c.model) {
  if (c.op === 'generate') return sendGenerate({ model, ...c.request });
  return sendEdit({ model, ...c.request }, c.images ?? [], c.mask, c.op === 'upscale' ? '/v1/upscale' : '/v1/edit', c.noPrompt);
}

/** Legacy Ideogram remix carries its parameters as one JSON string field, image_request: compare it parsed. */
function readableFields(fields: Record<string, string | string[]> | undefined): Record<string, unknown> | undefined {
  if (!fields) return undefined;
  const out: Record<string, unknown> = { ...fields };
  if (typeof out.image_request === 'string') out.image_request = JSON.parse(out.image_request);
  return out;
}

function title(c: RoutingCase): string {
  return `${c.model} ${c.op.replace('_', ' ')} -> POST ${c.upstream.path}`;
}

// ---------------------------------------------------------------- the table

describe.each(CASES.map((c) => [title(c), c] as const))('%s', (_title, c) => {
  let status = 0;
  let reply: GatewayReply;
  let received: RecordedRequest[] = [];

  beforeAll(async () => {
    h.simulator.reset();
    const res = await send(c);
    status = res.statusCode;
    reply = res.json<GatewayReply>();
    received = [...h.simulator.received];
  });

  it('sends exactly the documented upstream request', () => {
    expect(status, JSON.stringify(reply)).toBe(200);
    const submission = received[0]!;
    expect(submission.method).toBe('POST');
    expect(submission.path).toBe(c.upstream.path);
    if (c.upstream.json) {
      expect(submission.headers['content-type']).toMatch(/^application\/json/);
      expect(submission.json).toEqual(c.upstream.json);
      expect(submission.fields).toBeUndefined();
    } else {
      expect(submission.headers['content-type']).toMatch(/^multipart\/form-data/);
      expect(readableFields(submission.fields)).toEqual(c.upstream.fields);
      expect(submission.files?.map((f) => f.field)).toEqual(c.upstream.files);
    }
  });

  if (c.upstream.polled) {
    it('polls the submitted task at GET /v1/tasks/<taskId> until it is ready', () => {
      const polls = received.slice(1);
      // The harness's simulator answers Pending for a short while, then Ready: polling stops there.
      expect(polls.length).toBeGreaterThan(0);
      expect(polls.map((p) => p.taskStatus)).toEqual([...polls.slice(1).map(() => 'Pending'), 'Ready']);
      for (const poll of polls) {
        expect(poll.method).toBe('GET');
        expect(poll.path).toMatch(/^\/v1\/tasks\/sim-task-[0-9a-f-]+$/);
        expect(poll.path).toBe(polls[0]!.path);
      }
    });
  } else {
    it('makes exactly one upstream call', () => {
      expect(received).toHaveLength(1);
    });
  }

  it("authenticates upstream with the gateway's key in the family's header, never the client's", () => {
    expect(received.length).toBeGreaterThan(0);
    for (const request of received) {
      if (c.upstream.auth === 'bearer') {
        expect(request.headers.authorization).toBe(`Bearer ${UPSTREAM_KEY}`);
        expect(request.headers['api-key']).toBeUndefined();
      } else {
        expect(request.headers['api-key']).toBe(UPSTREAM_KEY);
        expect(request.headers.authorization).toBeUndefined();
      }
      const headerText = JSON.stringify(request.headers);
      expect(headerText).not.toContain(CLIENT_KEY);
    }
  });

  it('answers 200 naming the catalogue model, with n images each served as a PNG', async () => {
    expect(status).toBe(200);
    expect(reply.model).toBe(c.model);
    expect(reply.images).toHaveLength(c.expectImages);
    for (const image of reply.images) {
      const url = new URL(image.url);
      const res = await h.app.inject({ method: 'GET', url: url.pathname + url.search });
      expect(res.statusCode).toBe(200);
      expect(res.headers['content-type']).toBe('image/png');
      expect(res.rawPayload.subarray(1, 4).toString()).toBe('PNG');
    }
  });
});

// ---------------------------------------------------------------- coverage of the catalogue

describe('the routing table', () => {
  // A model that only describes answers text, not images: test/ideogram-upscale-describe.test.ts covers it.
  const imageModels = MODELS.filter((m) => m.generate || m.edit || m.upscale);

  it('covers every catalogue model id (that makes images) and no other', () => {
    const covered = [...new Set(CASES.map((c) => c.model))].sort();
    expect(covered).toEqual(imageModels.map((m) => m.id).sort());
  });

  it('covers every operation and edit mode that each model offers', () => {
    const offered = Object.fromEntries(
      imageModels.map((m) => [m.id, [...(m.generate ? ['generate'] : []), ...Object.keys(m.edit ?? {}), ...(m.upscale ? ['upscale'] : [])].sort()]),
    );
    const covered: Record<string, string[]> = {};
    for (const c of CASES) (covered[c.model] ??= []).push(c.op);
    for (const ops of Object.values(covered)) ops.sort();
    expect(covered).toEqual(offered);
  });
});

// ---------------------------------------------------------------- aliases

describe('a model named by an alias', () => {
  beforeEach(() => h.simulator.reset());

  const ALIASES: Array<{ alias: string; id: string; path: string }> = [
    { alias: 'google/imagen-4.0-generate-001', id: 'imagen-4.0-generate-001', path: '/v1/models/google/imagen-4.0-generate-001/predictions' },
    { alias: 'bfl/FLUX-1.1-pro', id: 'FLUX-1.1-pro', path: '/v1/models/bfl/FLUX-1.1-pro/predictions' },
    { alias: 'opanai/gpt-image-1', id: 'gpt-image-1', path: '/v1/models/opanai/gpt-image-1/predictions' },
    { alias: 'V3', id: 'ideogram-v3', path: '/ideogram/v1/ideogram-v3/generate' },
    { alias: 'ideogram/V3', id: 'ideogram-v3', path: '/ideogram/v1/ideogram-v3/generate' },
    { alias: 'V_2', id: 'ideogram-v2', path: '/ideogram/generate' },
    { alias: 'bailian/qwen-image-max', id: 'qwen-image-max', path: '/v1/models/bailian/qwen-image-max/predictions' },
  ];

  it.each(ALIASES)('$alias reaches the same upstream request as $id, and the answer names $id', async ({ alias, id, path }) => {
    const c = CASES.find((x) => x.model === id && x.op === 'generate')!;
    const byAlias = await send(c, alias);
    expect(byAlias.statusCode).toBe(200);
    expect(byAlias.json<GatewayReply>().model).toBe(id);
    const [aliasRequest] = h.simulator.received;
    h.simulator.reset();

    const byId = await send(c, id);
    expect(byId.statusCode).toBe(200);
    const [idRequest] = h.simulator.received;

    expect(aliasRequest!.path).toBe(path);
    const { method, path: p, json, fields } = aliasRequest!;
    expect({ method, path: p, json, fields: readableFields(fields) }).toEqual({
      method: idRequest!.method,
      path: idRequest!.path,
      json: idRequest!.json,
      fields: readableFields(idRequest!.fields),
    });
  });
});

// ---------------------------------------------------------------- masks and files

describe('an Ideogram edit with a mask', () => {
  beforeEach(() => h.simulator.reset());

  it.each([
    { model: 'ideogram-v3', path: '/ideogram/v1/ideogram-v3/edit' },
    { model: 'ideogram-v2', path: '/ideogram/edit' },
  ])('sends $path a PNG mask, black where the client mask was transparent and white elsewhere', async ({ model, path }) => {
    const res = await sendEdit({ model }, [SOURCE], MASK);
    expect(res.statusCode, res.body).toBe(200);
    const request = h.simulator.received.find((r) => r.path === path)!;
    const maskFile = request.files?.find((f) => f.field === 'mask');
    expect(maskFile?.mimetype).toBe('image/png');
    const data = maskFile!.data!;
    expect(data.subarray(1, 4).toString()).toBe('PNG');

    const { data: pixels, info } = await sharp(data).greyscale().raw().toBuffer({ resolveWithObject: true });
    expect([info.width, info.height]).toEqual([32, 32]);
    const wrong: string[] = [];
    for (let y = 0; y < 32; y++) {
      for (let x = 0; x < 32; x++) {
        const value = pixels[(y * 32 + x) * info.channels];
        const expected = x < 16 ? 0 : 255; // left half transparent in the client's mask = change = black
        if (value !== expected) wrong.push(`(${x},${y})=${value}`);
      }
    }
    expect(wrong.slice(0, 10)).toEqual([]);
  });

  it('sends the source image unchanged', async () => {
    const res = await sendEdit({ model: 'ideogram-v3' }, [SOURCE], MASK);
    expect(res.statusCode, res.body).toBe(200);
    const image = h.simulator.received[0]?.files?.find((f) => f.field === 'image');
    expect(image?.sha256).toBe(sha256(SOURCE));
  });
});

describe('an edit to gpt-image-1', () => {
  beforeEach(() => h.simulator.reset());

  it('sends several images as repeated image[] files, in the order given', async () => {
    const res = await sendEdit({ model: 'gpt-image-1' }, [SOURCE, SECOND, THIRD]);
    expect(res.statusCode, res.body).toBe(200);
    const files = h.simulator.received[0]?.files?.map((f) => ({ field: f.field, sha256: f.sha256 }));
    expect(files).toEqual([
      { field: 'image[]', sha256: sha256(SOURCE) },
      { field: 'image[]', sha256: sha256(SECOND) },
      { field: 'image[]', sha256: sha256(THIRD) },
    ]);
  });

  it('sends a single image as one image file', async () => {
    const res = await sendEdit({ model: 'gpt-image-1' }, [SOURCE]);
    expect(res.statusCode, res.body).toBe(200);
    const files = h.simulator.received[0]?.files?.map((f) => ({ field: f.field, sha256: f.sha256 }));
    expect(files).toEqual([{ field: 'image', sha256: sha256(SOURCE) }]);
  });

  it('passes the client mask through unchanged, since OpenAI shares the gateway convention', async () => {
    const res = await sendEdit({ model: 'gpt-image-1' }, [SOURCE], MASK);
    expect(res.statusCode, res.body).toBe(200);
    const mask = h.simulator.received[0]?.files?.find((f) => f.field === 'mask');
    expect(mask?.sha256).toBe(sha256(MASK));
  });
});
