/**
 * The model catalogue: every image model the upstream documents name, declared once.
 * Routing, validation, GET /v1/models, pricing and the docs all read from this list.
 * Sources: ../shared/upstream-docs (AiHubMix) and ../shared/upstream-specs (vendor OpenAPI).
 */
import type { FieldMapping, ModelSpec, Price, UpstreamRoute } from './model-spec.js';
import { arrayOf, bool, intRange, numberRange, oneOf, pixelSize, ratioRange, text, type ParamRule } from './param-rule.js';

const SEED: FieldMapping = { rule: intRange(0, 2147483647) };
const OUTPUT_PNG_JPEG_WEBP: FieldMapping = { rule: oneOf(['png', 'jpeg', 'webp']) };
const predictionsPath = (modelPath: string) => `/v1/models/${modelPath}/predictions`;

// ---------------------------------------------------------------- OpenAI (gpt-image, dall-e)

const GPT_IMAGE_SIZES = oneOf(['auto', '1024x1024', '1536x1024', '1024x1536']);
// gpt-image-2 takes any WIDTHxHEIGHT divisible by 16 with a ratio within 1:3..3:1, up to 3840x2160.
const GPT_IMAGE_2_SIZES = pixelSize({
  minSide: 256,
  maxSide: 3840,
  multipleOf: 16,
  maxPixels: 3840 * 2160,
  maxRatio: 3,
  presets: ['auto', '1024x1024', '1536x1024', '1024x1536'],
});

// OpenAI's published prices per million tokens; the cost of an answer follows from the usage its reply reports.
const GPT_IMAGE_1_PRICE: Price = { perMillionTokensUsd: { textInput: 5, imageInput: 10, imageOutput: 40 } };
const GPT_IMAGE_1_5_PRICE: Price = { perMillionTokensUsd: { textInput: 5, imageInput: 8, imageOutput: 32 } };

function gptImage(id: string, modelPath: string, price: Price | undefined, sizeRule = GPT_IMAGE_SIZES): ModelSpec {
  const common = {
    n: { rule: intRange(1, 10) },
    size: { rule: sizeRule },
    quality: { rule: oneOf(['low', 'medium', 'high', 'auto']) },
    output_format: OUTPUT_PNG_JPEG_WEBP,
    background: { rule: oneOf(['transparent', 'opaque', 'auto']) },
  } satisfies UpstreamRoute['params'];
  return {
    id,
    aliases: [modelPath, `openai/${id}`].filter((a, i, all) => all.indexOf(a) === i),
    description: `OpenAI ${id}: text to image through the unified predictions API; edits through the OpenAI-compatible /v1/images/edits.`,
    generate: {
      family: 'predictions',
      path: predictionsPath(modelPath),
      prompt: { to: 'prompt', maxLength: 32000 },
      params: common,
      options: {
        moderation: { rule: oneOf(['low', 'auto']) },
        output_compression: { rule: intRange(0, 100) },
      },
      ...(price ? { price } : {}),
    },
    edit: {
      edit: {
        family: 'openai-multipart',
        path: '/v1/images/edits',
        fixed: { model: id },
        prompt: { to: 'prompt', maxLength: 32000 },
        params: common,
        options: {
          input_fidelity: { rule: oneOf(['high', 'low']) },
          output_compression: { rule: intRange(0, 100) },
        },
        images: { to: 'image', encoding: 'file', max: 16, repeatedFileField: 'image[]' },
        mask: { to: 'mask', convention: 'transparent', required: false },
        ...(price ? { price } : {}),
      },
    },
    imageToImageMode: 'edit',
  };
}

const dallE3: ModelSpec = {
  id: 'dall-e-3',
  aliases: ['opanai/dall-e-3', 'openai/dall-e-3'],
  description: 'OpenAI DALL-E 3: one image per request.',
  generate: {
    family: 'predictions',
    path: predictionsPath('opanai/dall-e-3'),
    prompt: { to: 'prompt', maxLength: 4000 },
    params: {
      n: { rule: intRange(1, 1) },
      size: { rule: oneOf(['1024x1024', '1792x1024', '1024x1792']) },
      quality: { rule: oneOf(['standard', 'hd']) },
      style: { rule: oneOf(['vivid', 'natural']) },
    },
    options: {},
  },
};

// ---------------------------------------------------------------- Google Imagen

function imagen(id: string, maxN: number, note = ''): ModelSpec {
  return {
    id,
    aliases: [`google/${id}`],
    description: `Google ${id}${note}.`,
    generate: {
      family: 'predictions',
      path: predictionsPath(`google/${id}`),
      prompt: { to: 'prompt', maxLength: 10000 },
      // Every AiHubMix example writes the count as numberOfImages (one table says sampleCount).
      params: { n: { rule: intRange(1, maxN), to: 'numberOfImages' } },
      options: {},
    },
  };
}

// ---------------------------------------------------------------- Black Forest Labs Flux

const FLUX_RATIOS: FieldMapping = { rule: ratioRange(9 / 21, 21 / 9, 'from 9:21 to 21:9') };
const FLUX_OUTPUT: FieldMapping = { rule: oneOf(['jpeg', 'png']) };

const flux11Pro: ModelSpec = {
  id: 'FLUX-1.1-pro',
  aliases: ['bfl/FLUX-1.1-pro'],
  description: 'Black Forest Labs FLUX 1.1 [pro], synchronous; seed, safety_tolerance and prompt_upsampling travel in extra_body.',
  generate: {
    family: 'predictions',
    path: predictionsPath('bfl/FLUX-1.1-pro'),
    prompt: { to: 'prompt', maxLength: 10000 },
    params: {
      size: { rule: pixelSize({ minSide: 256, maxSide: 1440, multipleOf: 32 }) },
      output_format: FLUX_OUTPUT,
      seed: { ...SEED, to: 'extra_body.seed' },
    },
    options: {
      prompt_upsampling: { rule: bool, to: 'extra_body.prompt_upsampling' },
      safety_tolerance: { rule: intRange(0, 6), to: 'extra_body.safety_tolerance' },
    },
  },
};

function fluxWithImageInput(id: string, opts: { async: boolean; maxSafety: number; promptUpsampling: boolean; description: string }): ModelSpec {
  const base: UpstreamRoute = {
    family: 'predictions',
    path: predictionsPath(`bfl/${id}`),
    async: opts.async,
    prompt: { to: 'prompt', maxLength: 10000 },
    params: { aspect_ratio: FLUX_RATIOS, seed: SEED, output_format: FLUX_OUTPUT },
    options: {
      safety_tolerance: { rule: intRange(0, opts.maxSafety) },
      // Black Forest Labs' spec gives FLUX.2 [pro] no prompt_upsampling.
      ...(opts.promptUpsampling ? { prompt_upsampling: { rule: bool } } : {}),
    },
  };
  return {
    id,
    aliases: [`bfl/${id}`],
    description: opts.description,
    generate: base,
    edit: { edit: { ...base, images: { to: 'input_image', encoding: 'base64', max: 1, shape: 'single' } } },
    imageToImageMode: 'edit',
  };
}

// ---------------------------------------------------------------- Ideogram

const IDEOGRAM_V3_RATIOS = [
  '1:3', '3:1', '1:2', '2:1', '9:16', '16:9', '10:16', '16:10', '2:3', '3:2', '3:4', '4:3', '4:5', '5:4', '1:1',
];
const IDEOGRAM_V3_GENERATE_PRICE = { byOption: 'rendering_speed', defaultValue: 'DEFAULT', perImageUsd: { TURBO: 0.03, DEFAULT: 0.06, QUALITY: 0.09 } };
const IDEOGRAM_V3_EDIT_PRICE = { byOption: 'rendering_speed', defaultValue: 'DEFAULT', perImageUsd: { TURBO: 0.06, DEFAULT: 0.06, QUALITY: 0.09 } };

function ideogramV3Route(
  endpoint: 'generate' | 'remix' | 'edit' | 'replace-background',
  extra: Partial<UpstreamRoute>,
): UpstreamRoute {
  const params: UpstreamRoute['params'] = {
    n: { rule: intRange(1, 8), to: 'num_images' },
    seed: SEED,
    style: { rule: oneOf(['AUTO', 'GENERAL', 'REALISTIC', 'DESIGN']), to: 'style_type' },
  };
  if (endpoint !== 'replace-background') {
    params.aspect_ratio = { rule: oneOf(IDEOGRAM_V3_RATIOS), write: (v) => String(v).replace(':', 'x') };
    params.negative_prompt = { rule: text(10000) };
  }
  return {
    family: 'ideogram-multipart',
    path: `/ideogram/v1/ideogram-v3/${endpoint}`,
    prompt: { to: 'prompt', maxLength: 10000 },
    params,
    options: {
      rendering_speed: { rule: oneOf(['TURBO', 'DEFAULT', 'QUALITY']) },
      magic_prompt: { rule: oneOf(['AUTO', 'ON', 'OFF']) },
      ...extra.options,
    },
    ...(extra.images ? { images: extra.images } : {}),
    ...(extra.mask ? { mask: extra.mask } : {}),
    ...(extra.price ? { price: extra.price } : {}),
  };
}

const ONE_IMAGE_FILE = { to: 'image', encoding: 'file', max: 1 } as const;

const ideogramV3: ModelSpec = {
  id: 'ideogram-v3',
  aliases: ['V3', 'ideogram/V3'],
  description: 'Ideogram 3.0 through the native API: generate, edit (mask), remix and replace-background; priced by rendering_speed.',
  generate: ideogramV3Route('generate', { price: IDEOGRAM_V3_GENERATE_PRICE }),
  edit: {
    edit: ideogramV3Route('edit', {
      images: ONE_IMAGE_FILE,
      mask: { to: 'mask', convention: 'black', required: true },
      price: IDEOGRAM_V3_EDIT_PRICE,
    }),
    remix: ideogramV3Route('remix', {
      images: ONE_IMAGE_FILE,
      options: { image_weight: { rule: intRange(1, 100) } },
      price: IDEOGRAM_V3_GENERATE_PRICE,
    }),
    replace_background: ideogramV3Route('replace-background', { images: ONE_IMAGE_FILE, price: IDEOGRAM_V3_EDIT_PRICE }),
  },
  imageToImageMode: 'remix',
};

const IDEOGRAM_LEGACY_RATIOS = ['1:1', '3:1', '1:3', '3:2', '2:3', '4:3', '3:4', '16:9', '9:16', '16:10', '10:16'];
const IDEOGRAM_LEGACY_STYLES = ['AUTO', 'GENERAL', 'REALISTIC', 'DESIGN', 'RENDER_3D', 'ANIME'];

function ideogramLegacy(
  id: string,
  upstreamModel: string,
  price: { generate: number; edit?: number },
): ModelSpec {
  const takesNegativePrompt = !upstreamModel.startsWith('V_2A');
  const takesStyle = !upstreamModel.startsWith('V_1');
  // Generate and remix carry everything inside `image_request` (remix sends it as a JSON string field).
  const requestParams = (root: string): UpstreamRoute['params'] => ({
    n: { rule: intRange(1, 8), to: `${root}num_images` },
    seed: { ...SEED, to: `${root}seed` },
    aspect_ratio: { rule: oneOf(IDEOGRAM_LEGACY_RATIOS), to: `${root}aspect_ratio`, write: (v) => `ASPECT_${String(v).replace(':', '_')}` },
    ...(takesNegativePrompt ? { negative_prompt: { rule: text(10000), to: `${root}negative_prompt` } } : {}),
    ...(takesStyle ? { style: { rule: oneOf(IDEOGRAM_LEGACY_STYLES), to: `${root}style_type` } } : {}),
  });
  const magic = (root: string) => ({ magic_prompt_option: { rule: oneOf(['AUTO', 'ON', 'OFF']), to: `${root}magic_prompt_option` } });
  const spec: ModelSpec = {
    id,
    aliases: [upstreamModel, `ideogram/${upstreamModel}`],
    description: `Ideogram legacy model ${upstreamModel} through /ideogram/generate and /remix${price.edit ? ' and /edit' : ''}.`,
    generate: {
      family: 'ideogram-json',
      path: '/ideogram/generate',
      prompt: { to: 'image_request.prompt', maxLength: 10000 },
      fixed: { image_request: { model: upstreamModel } },
      params: requestParams('image_request.'),
      options: magic('image_request.'),
      price: { perImageUsd: price.generate },
    },
    edit: {
      remix: {
        family: 'ideogram-multipart',
        path: '/ideogram/remix',
        prompt: { to: 'image_request.prompt', maxLength: 10000 },
        fixed: { image_request: { model: upstreamModel } },
        params: requestParams('image_request.'),
        options: { ...magic('image_request.'), image_weight: { rule: intRange(1, 100), to: 'image_request.image_weight' } },
        images: { to: 'image_file', encoding: 'file', max: 1 },
        price: { perImageUsd: price.generate },
      },
    },
    imageToImageMode: 'remix',
  };
  if (price.edit !== undefined) {
    spec.edit!.edit = {
      family: 'ideogram-multipart',
      path: '/ideogram/edit',
      prompt: { to: 'prompt', maxLength: 10000 },
      fixed: { model: upstreamModel },
      params: {
        n: { rule: intRange(1, 8), to: 'num_images' },
        seed: SEED,
        style: { rule: oneOf(IDEOGRAM_LEGACY_STYLES), to: 'style_type' },
      },
      options: magic(''),
      images: { to: 'image_file', encoding: 'file', max: 1 },
      mask: { to: 'mask', convention: 'black', required: true },
      price: { perImageUsd: price.edit },
    };
  }
  return spec;
}

// ---------------------------------------------------------------- Alibaba Wan / Qwen (zimage)

interface ZimageModel {
  id: string;
  maxN: number;
  size?: ParamRule;
  wan27?: boolean;
  generate: boolean;
  edit: boolean;
}

function zimage(m: ZimageModel): ModelSpec {
  const params: UpstreamRoute['params'] = { n: { rule: intRange(1, m.maxN) }, seed: SEED };
  // zimage writes sizes W*H.
  if (m.size) params.size = { rule: m.size, write: (v) => String(v).replace('x', '*') };
  const options: UpstreamRoute['options'] = { watermark: { rule: bool } };
  if (m.wan27) {
    options.thinking_mode = { rule: bool };
    options.color_palette = { rule: arrayOf('an array of colour objects', 3, 10) };
  } else {
    params.negative_prompt = { rule: text(500) };
    options.prompt_extend = { rule: bool };
  }
  const route: UpstreamRoute = {
    family: 'predictions',
    path: predictionsPath(`bailian/${m.id}`),
    prompt: { to: 'prompt', maxLength: 800 },
    params,
    options,
  };
  return {
    id: m.id,
    aliases: [`bailian/${m.id}`],
    description: `Alibaba ${m.id} through the zimage predictions API; upstream result URLs live 24 h.`,
    ...(m.generate ? { generate: route } : {}),
    ...(m.edit
      ? { edit: { edit: { ...route, images: { to: 'images', encoding: 'data-url', max: 3, shape: 'array' } } }, imageToImageMode: 'edit' as const }
      : {}),
  };
}

const QWEN_FIXED_SIZES = oneOf(['1664x928', '1472x1104', '1328x1328', '1104x1472', '928x1664']);

// ---------------------------------------------------------------- the rest

const stableDiffusion35: ModelSpec = {
  id: 'Stable-Diffusion-3-5-Large',
  aliases: ['stability/Stable-Diffusion-3-5-Large'],
  description: 'Stability AI Stable Diffusion 3.5 Large.',
  generate: {
    family: 'predictions',
    path: predictionsPath('stability/Stable-Diffusion-3-5-Large'),
    prompt: { to: 'prompt', maxLength: 10000 },
    params: { n: { rule: intRange(1, 4) } },
    options: {},
  },
};

const glmImage: ModelSpec = {
  id: 'glm-image',
  aliases: ['openai/glm-image'],
  description: 'Zhipu GLM-Image: quality hd (default, ~20 s) or standard (~5-10 s).',
  generate: {
    family: 'predictions',
    path: predictionsPath('openai/glm-image'),
    prompt: { to: 'prompt', maxLength: 10000 },
    params: {
      quality: { rule: oneOf(['hd', 'standard']) },
      size: { rule: pixelSize({ minSide: 1024, maxSide: 2048, multipleOf: 32, maxPixels: 2 ** 22 }) },
    },
    options: {},
  },
};

// Doubao's group mode takes one option, max_images 1..15; anything else would be refused upstream (or cost more).
const SEQUENTIAL_IMAGE_OPTIONS: ParamRule = {
  allowed: 'an object {"max_images": an integer from 1 to 15}',
  check(v) {
    const ok =
      typeof v === 'object' &&
      v !== null &&
      !Array.isArray(v) &&
      Object.keys(v).every((k) => k === 'max_images') &&
      intRange(1, 15).check((v as { max_images?: unknown }).max_images ?? 15) === undefined;
    return ok ? undefined : 'must be an object {"max_images": an integer from 1 to 15}';
  },
};

const doubaoRoute: UpstreamRoute = {
  family: 'predictions',
  path: predictionsPath('doubao/doubao-seedream-4-0'),
  prompt: { to: 'prompt', maxLength: 10000 },
  params: { size: { rule: oneOf(['1K', '2K', '4K']) }, seed: SEED },
  options: {
    sequential_image_generation: { rule: oneOf(['auto', 'disabled']) },
    sequential_image_generation_options: { rule: SEQUENTIAL_IMAGE_OPTIONS },
    // Upstream adds a watermark unless told otherwise.
    watermark: { rule: bool },
  },
};

const doubaoSeedream40: ModelSpec = {
  id: 'doubao-seedream-4-0',
  aliases: ['doubao/doubao-seedream-4-0'],
  description: 'ByteDance Doubao Seedream 4.0: sizes 1K/2K/4K; reference images go in the same call. Upstream watermarks by default.',
  generate: doubaoRoute,
  edit: { edit: { ...doubaoRoute, images: { to: 'image', encoding: 'data-url', max: 10, shape: 'array' } } },
  imageToImageMode: 'edit',
};

const IRAG_PARAMS: UpstreamRoute['params'] = {
  n: { rule: intRange(1, 4) },
  size: { rule: pixelSize({ minSide: 512, maxSide: 2048 }) },
};
const IRAG_OPTIONS: UpstreamRoute['options'] = { guidance: { rule: numberRange(0, 30) }, watermark: { rule: bool } };

function irag(id: string, operations: { generate: boolean }): ModelSpec {
  const route: UpstreamRoute = {
    family: 'predictions',
    path: predictionsPath(`qianfan/${id}`),
    prompt: { to: 'prompt', maxLength: 10000 },
    params: IRAG_PARAMS,
    options: IRAG_OPTIONS,
  };
  return {
    id,
    aliases: [`qianfan/${id}`],
    description: `Baidu ERNIE ${id}; reference image as refer_image.`,
    ...(operations.generate ? { generate: route } : {}),
    edit: { edit: { ...route, images: { to: 'refer_image', encoding: 'data-url', max: 1, shape: 'single' } } },
    imageToImageMode: 'edit',
  };
}

export const MODELS: readonly ModelSpec[] = [
  gptImage('gpt-image-1', 'opanai/gpt-image-1', GPT_IMAGE_1_PRICE),
  gptImage('gpt-image-1.5', 'openai/gpt-image-1.5', GPT_IMAGE_1_5_PRICE),
  // No published token prices to rely on yet: unpriced unless PRICE_OVERRIDES names it.
  gptImage('gpt-image-2', 'openai/gpt-image-2', undefined, GPT_IMAGE_2_SIZES),
  dallE3,
  imagen('imagen-4.0-ultra-generate-001', 1, ', one image per call'),
  imagen('imagen-4.0-generate-001', 4),
  imagen('imagen-4.0-fast-generate-001', 4),
  imagen('imagen-4.0-fast-generate-preview-06-06', 4),
  imagen('imagen-3.0-generate-002', 4),
  imagen('imagen-4.0-ultra-generate-preview-06-06', 1, ' (named in older documents)'),
  imagen('imagen-4.0-generate-preview-06-06', 4, ' (named in older documents)'),
  imagen('imagen-4.0-ultra-generate-exp-05-20', 1, ' (named in older documents)'),
  imagen('imagen-4.0-generate-preview-05-20', 4, ' (named in older documents)'),
  flux11Pro,
  fluxWithImageInput('flux-kontext-max', { promptUpsampling: true, async: true, maxSafety: 6, description: 'Black Forest Labs FLUX.1 Kontext [max], asynchronous task; edits take the source image as input_image.' }),
  fluxWithImageInput('flux-kontext-pro', { promptUpsampling: true, async: true, maxSafety: 6, description: 'Black Forest Labs FLUX.1 Kontext [pro], asynchronous task; edits take the source image as input_image.' }),
  fluxWithImageInput('flux-2-pro', { promptUpsampling: false, async: true, maxSafety: 5, description: 'Black Forest Labs FLUX.2 [pro], asynchronous task.' }),
  fluxWithImageInput('flux-2-flex', { promptUpsampling: true, async: true, maxSafety: 5, description: 'Black Forest Labs FLUX.2 [flex], asynchronous task.' }),
  fluxWithImageInput('FLUX.1-Kontext-pro', { promptUpsampling: true, async: false, maxSafety: 6, description: 'Black Forest Labs FLUX.1 Kontext [pro] through the general interface, synchronous.' }),
  ideogramV3,
  ideogramLegacy('ideogram-v2', 'V_2', { generate: 0.08, edit: 0.08 }),
  ideogramLegacy('ideogram-v2-turbo', 'V_2_TURBO', { generate: 0.05, edit: 0.05 }),
  ideogramLegacy('ideogram-v2a', 'V_2A', { generate: 0.04 }),
  ideogramLegacy('ideogram-v2a-turbo', 'V_2A_TURBO', { generate: 0.025 }),
  ideogramLegacy('ideogram-v1', 'V_1', { generate: 0.06 }),
  ideogramLegacy('ideogram-v1-turbo', 'V_1_TURBO', { generate: 0.02 }),
  stableDiffusion35,
  zimage({ id: 'wan2.7-image-pro', maxN: 1, wan27: true, generate: true, edit: true, size: pixelSize({ minSide: 768, maxSide: 4096, maxRatio: 8, presets: ['1K', '2K', '4K'] }) }),
  zimage({ id: 'wan2.7-image', maxN: 1, wan27: true, generate: true, edit: true, size: pixelSize({ minSide: 768, maxSide: 2048, maxRatio: 8, presets: ['1K', '2K'] }) }),
  zimage({ id: 'wan2.6-t2i', maxN: 4, generate: true, edit: false, size: pixelSize({ minSide: 1280, maxSide: 1440, maxRatio: 4 }) }),
  zimage({ id: 'qwen-image-2.0-pro', maxN: 6, generate: true, edit: false, size: pixelSize({ minSide: 512, maxSide: 2048, maxPixels: 2048 * 2048 }) }),
  zimage({ id: 'qwen-image-2.0', maxN: 6, generate: true, edit: false, size: pixelSize({ minSide: 512, maxSide: 2048, maxPixels: 2048 * 2048 }) }),
  zimage({ id: 'qwen-image-max', maxN: 6, generate: true, edit: false, size: QWEN_FIXED_SIZES }),
  zimage({ id: 'qwen-image-plus', maxN: 6, generate: true, edit: false, size: QWEN_FIXED_SIZES }),
  zimage({ id: 'qwen-image-edit', maxN: 1, generate: false, edit: true }),
  zimage({ id: 'qwen-image-edit-plus', maxN: 6, generate: false, edit: true, size: pixelSize({ minSide: 512, maxSide: 2048 }) }),
  zimage({ id: 'qwen-image-edit-max', maxN: 6, generate: false, edit: true, size: pixelSize({ minSide: 512, maxSide: 2048 }) }),
  glmImage,
  doubaoSeedream40,
  irag('irag-1.0', { generate: true }),
  irag('ernie-irag-edit', { generate: false }),
];
