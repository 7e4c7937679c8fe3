class GraphModule(torch.nn.Module):
    def forward(self, L_args_0_: "i64[1, 13]", L_self_modules_model_modules_embed_tokens_parameters_weight_: "f32[49152, 576]", L_self_modules_model_modules_rotary_emb_buffers_inv_freq_: "f32[32]", L_self_modules_model_modules_layers_modules_0_modules_input_layernorm_parameters_weight_: "f32[576]",  …[30654 more chars]
        # ... 274 placeholder aliases (l_x_ = L_x_) omitted

        # File: transformers/models/llama/modeling_llama.py:370 in forward, code: inputs_embeds: torch.Tensor = self.embed_tokens(input_ids)
        inputs_embeds: "f32[1, 13, 576]" = torch.nn.functional.embedding(l_args_0_, l_self_modules_model_modules_embed_tokens_parameters_weight_, 2, None, 2.0, False, False);  l_args_0_ = None

        # File: transformers/models/llama/modeling_llama.py:377 in forward, code: position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
        arange: "i64[13]" = torch.arange(13, device = device(type='cpu'))
        position_ids: "i64[13]" = arange + 0;  arange = None

        # File: transformers/models/llama/modeling_llama.py:378 in forward, code: position_ids = position_ids.unsqueeze(0)
        position_ids_1: "i64[1, 13]" = position_ids.unsqueeze(0);  position_ids = None

        # File: transformers/models/llama/modeling_llama.py:111 in forward, code: freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        getitem: "i64[1, 13, 1]" = position_ids_1[(Ellipsis, None)];  position_ids_1 = None
        float_1: "f32[1, 13, 1]" = getitem.float();  getitem = None
        to: "f32[32]" = l_self_modules_model_modules_rotary_emb_buffers_inv_freq_.to(device = device(type='cpu'), dtype = torch.float32);  l_self_modules_model_modules_rotary_emb_buffers_inv_freq_ = None
        freqs: "f32[1, 13, 32]" = float_1 * to;  float_1 = to = None

        # File: transformers/models/llama/modeling_llama.py:112 in forward, code: emb = torch.cat((freqs, freqs), dim=-1)
        emb: "f32[1, 13, 64]" = torch.cat((freqs, freqs), dim = -1);  freqs = None

        # File: transformers/models/llama/modeling_llama.py:113 in forward, code: cos = emb.cos() * self.attention_scaling
        cos: "f32[1, 13, 64]" = emb.cos()
        cos_1: "f32[1, 13, 64]" = cos * 1.0;  cos = None

        # File: transformers/models/llama/modeling_llama.py:114 in forward, code: sin = emb.sin() * self.attention_scaling
        sin: "f32[1, 13, 64]" = emb.sin();  emb = None
        sin_1: "f32[1, 13, 64]" = sin * 1.0;  sin = None

        # File: transformers/models/llama/modeling_llama.py:116 in forward, code: return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)
        cos_2: "f32[1, 13, 64]" = cos_1.to(dtype = torch.float32);  cos_1 = None
        sin_2: "f32[1, 13, 64]" = sin_1.to(dtype = torch.float32);  sin_1 = None

        # File: transformers/models/llama/modeling_llama.py:391 in forward, code: for decoder_layer in self.layers[: self.config.num_hidden_layers]:
        _log_api_usage_once = torch._C._log_api_usage_once('python.nn_module');  _log_api_usage_once = None

        # File: transformers/models/llama/modeling_llama.py:63 in forward, code: hidden_states = hidden_states.to(torch.float32)
        hidden_states: "f32[1, 13, 576]" = inputs_embeds.to(torch.float32)

        # File: transformers/models/llama/modeling_llama.py:64 in forward, code: variance = hidden_states.pow(2).mean(-1, keepdim=True)
        pow_1: "f32[1, 13, 576]" = hidden_states.pow(2)
        variance: "f32[1, 13, 1]" = pow_1.mean(-1, keepdim = True);  pow_1 = None

        # File: transformers/models/llama/modeling_llama.py:65 in forward, code: hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        add_1: "f32[1, 13, 1]" = variance + 9.999999747378752e-06;  variance = None
        rsqrt: "f32[1, 13, 1]" = torch.rsqrt(add_1);  add_1 = None
        hidden_states_1: "f32[1, 13, 576]" = hidden_states * rsqrt;  hidden_states = rsqrt = None

        # File: transformers/models/llama/modeling_llama.py:66 in forward, code: return self.weight * hidden_states.to(input_dtype)
        to_4: "f32[1, 13, 576]" = hidden_states_1.to(torch.float32);  hidden_states_1 = None
        hidden_states_2: "f32[1, 13, 576]" = l_self_modules_model_modules_layers_modules_0_modules_input_layernorm_parameters_weight_ * to_4;  l_self_modules_model_modules_layers_modules_0_modules_input_layernorm_parameters_weight_ = to_4 = None

        # No stacktrace found for following nodes
        sfmp_empty_perm_cpu: "i32[0]" = self.sfmp_empty_perm_cpu
        sfmp_model_layers_0_self_attn_q_proj_w4: "u8[576, 288]" = self.sfmp_model_layers_0_self_attn_q_proj_w4
        sfmp_model_layers_0_self_attn_q_proj_sz: "bf16[9, 576, 2]" = self.sfmp_model_layers_0_self_attn_q_proj_sz
        sfmp_model_layers_0_self_attn_q_proj_col_perm: "i64[576]" = self.sfmp_model_layers_0_self_attn_q_proj_col_perm
        index_select: "f32[1, 13, 576]" = torch.index_select(hidden_states_2, -1, sfmp_model_layers_0_self_attn_q_proj_col_perm);  hidden_states_2 = sfmp_model_layers_0_self_attn_q_proj_col_perm = None
        linear_cpu_int4_default: "f32[1, 13, 576]" = torch.ops.sfmp.linear_cpu_int4.default(index_select, sfmp_model_layers_0_self_attn_q_proj_w4, sfmp_model_layers_0_self_attn_q_proj_sz, sfmp_empty_perm_cpu, sfmp_empty_perm_cpu, 576, 576, 64);  sfmp_model_layers_0_self_attn_q_proj_w4 = sfmp_model_l …[34 more chars]
        sfmp_model_layers_0_self_attn_q_proj_row_perm_inv: "i64[576]" = self.sfmp_model_layers_0_self_attn_q_proj_row_perm_inv
        index_select_1: "f32[1, 13, 576]" = torch.index_select(linear_cpu_int4_default, -1, sfmp_model_layers_0_self_attn_q_proj_row_perm_inv);  linear_cpu_int4_default = sfmp_model_layers_0_self_attn_q_proj_row_perm_inv = None

        # File: transformers/models/llama/modeling_llama.py:243 in forward, code: query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        view: "f32[1, 13, 9, 64]" = index_select_1.view((1, 13, -1, 64));  index_select_1 = None
        query_states: "f32[1, 9, 13, 64]" = view.transpose(1, 2);  view = None

        # No stacktrace found for following nodes
        sfmp_model_layers_0_self_attn_k_proj_w4: "u8[192, 288]" = self.sfmp_model_layers_0_self_attn_k_proj_w4
        sfmp_model_layers_0_self_attn_k_proj_sz: "bf16[9, 192, 2]" = self.sfmp_model_layers_0_self_attn_k_proj_sz
        linear_cpu_int4_default_1: "f32[1, 13, 192]" = torch.ops.sfmp.linear_cpu_int4.default(index_select, sfmp_model_layers_0_self_attn_k_proj_w4, sfmp_model_layers_0_self_attn_k_proj_sz, sfmp_empty_perm_cpu, sfmp_empty_perm_cpu, 192, 576, 64);  sfmp_model_layers_0_self_attn_k_proj_w4 = sfmp_model …[36 more chars]

        # File: transformers/models/llama/modeling_llama.py:244 in forward, code: key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        view_1: "f32[1, 13, 3, 64]" = linear_cpu_int4_default_1.view((1, 13, -1, 64));  linear_cpu_int4_default_1 = None
        key_states: "f32[1, 3, 13, 64]" = view_1.transpose(1, 2);  view_1 = None

        # No stacktrace found for following nodes
        sfmp_model_layers_0_self_attn_v_proj_w4: "u8[192, 288]" = self.sfmp_model_layers_0_self_attn_v_proj_w4
        sfmp_model_layers_0_self_attn_v_proj_sz: "bf16[9, 192, 2]" = self.sfmp_model_layers_0_self_attn_v_proj_sz
        linear_cpu_int4_default_2: "f32[1, 13, 192]" = torch.ops.sfmp.linear_cpu_int4.default(index_select, sfmp_model_layers_0_self_attn_v_proj_w4, sfmp_model_layers_0_self_attn_v_proj_sz, sfmp_empty_perm_cpu, sfmp_empty_perm_cpu, 192, 576, 64);  index_select = sfmp_model_layers_0_self_attn_v_proj_ …[51 more chars]

        # File: transformers/models/llama/modeling_llama.py:245 in forward, code: value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        view_2: "f32[1, 13, 3, 64]" = linear_cpu_int4_default_2.view((1, 13, -1, 64));  linear_cpu_int4_default_2 = None
        value_states: "f32[1, 3, 13, 64]" = view_2.transpose(1, 2);  view_2 = None

        # File: transformers/models/llama/modeling_llama.py:145 in apply_rotary_pos_emb, code: cos = cos.unsqueeze(unsqueeze_dim)
        cos_3: "f32[1, 1, 13, 64]" = cos_2.unsqueeze(1)

        # File: transformers/models/llama/modeling_llama.py:146 in apply_rotary_pos_emb, code: sin = sin.unsqueeze(unsqueeze_dim)
        sin_3: "f32[1, 1, 13, 64]" = sin_2.unsqueeze(1)

        # File: transformers/models/llama/modeling_llama.py:147 in apply_rotary_pos_emb, code: q_embed = (q * cos) + (rotate_half(q) * sin)
        mul_5: "f32[1, 9, 13, 64]" = query_states * cos_3

        # File: transformers/models/llama/modeling_llama.py:121 in rotate_half, code: x1 = x[..., : x.shape[-1] // 2]
        x1: "f32[1, 9, 13, 32]" = query_states[(Ellipsis, slice(None, 32, None))]

        # File: transformers/models/llama/modeling_llama.py:122 in rotate_half, code: x2 = x[..., x.shape[-1] // 2 :]
        x2: "f32[1, 9, 13, 32]" = query_states[(Ellipsis, slice(32, None, None))];  query_states = None

        # File: transformers/models/llama/modeling_llama.py:123 in rotate_half, code: return torch.cat((-x2, x1), dim=-1)
        neg: "f32[1, 9, 13, 32]" = -x2;  x2 = None
        cat_1: "f32[1, 9, 13, 64]" = torch.cat((neg, x1), dim = -1);  neg = x1 = None

        # File: transformers/models/llama/modeling_llama.py:147 in apply_rotary_pos_emb, code: q_embed = (q * cos) + (rotate_half(q) * sin)
        mul_6: "f32[1, 9, 13, 64]" = cat_1 * sin_3;  cat_1 = None
        q_embed: "f32[1, 9, 13, 64]" = mul_5 + mul_6;  mul_5 = mul_6 = None

        # File: transformers/models/llama/modeling_llama.py:148 in apply_rotary_pos_emb, code: k_embed = (k * cos) + (rotate_half(k) * sin)
        mul_7: "f32[1, 3, 13, 64]" = key_states * cos_3;  cos_3 = None

        # File: transformers/models/llama/modeling_llama.py:121 in rotate_half, code: x1 = x[..., : x.shape[-1] // 2]
        x1_1: "f32[1, 3, 13, 32]" = key_states[(Ellipsis, slice(None, 32, None))]

        # File: transformers/models/llama/modeling_llama.py:122 in rotate_half, code: x2 = x[..., x.shape[-1] // 2 :]
        x2_1: "f32[1, 3, 13, 32]" = key_states[(Ellipsis, slice(32, None, None))];  key_states = None

        # File: transformers/models/llama/modeling_llama.py:123 in rotate_half, code: return torch.cat((-x2, x1), dim=-1)
        neg_1: "f32[1, 3, 13, 32]" = -x2_1;  x2_1 = None
        cat_2: "f32[1, 3, 13, 64]" = torch.cat((neg_1, x1_1), dim = -1);  neg_1 = x1_1 = None

        # File: transformers/models/llama/modeling_llama.py:148 in apply_rotary_pos_emb, code: k_embed = (k * cos) + (rotate_half(k) * sin)
        mul_8: "f32[1, 3, 13, 64]" = cat_2 * sin_3;  cat_2 = sin_3 = None
        k_embed: "f32[1, 3, 13, 64]" = mul_7 + mul_8;  mul_7 = mul_8 = None

        # File: transformers/cache_utils.py:115 in lazy_initialization, code: self.keys = torch.tensor([], dtype=self.dtype, device=self.device)
        tensor: "f32[0]" = torch.tensor([], dtype = torch.float32, device = device(type='cpu'))

        # File: transformers/cache_utils.py:116 in lazy_initialization, code: self.values = torch.tensor([], dtype=self.dtype, device=self.device)
        tensor_1: "f32[0]" = torch.tensor([], dtype = torch.float32, device = device(type='cpu'))

        # File: transformers/cache_utils.py:136 in update, code: self.keys = torch.cat([self.keys, key_states], dim=-2)
        keys: "f32[1, 3, 13, 64]" = torch.cat([tensor, k_embed], dim = -2);  tensor = k_embed = None

        # File: transformers/cache_utils.py:137 in update, code: self.values = torch.cat([self.values, value_states], dim=-2)
        values: "f32[1, 3, 13, 64]" = torch.cat([tensor_1, value_states], dim = -2);  tensor_1 = value_states = None

        # File: transformers/integrations/sdpa_attention.py:193 in sdpa_attention_forward, code: attn_output = torch.nn.functional.scaled_dot_product_attention(
        attn_output: "f32[1, 9, 13, 64]" = torch._C._nn.scaled_dot_product_attention(q_embed, keys, values, attn_mask = None, dropout_p = 0.0, scale = 0.125, is_causal = True, enable_gqa = True);  q_embed = None

        # File: transformers/integrations/sdpa_attention.py:205 in sdpa_attention_forward, code: attn_output = attn_output.reshape(attn_output.shape[0], -1, q_length, value.shape[-1])
        attn_output_1: "f32[1, 9, 13, 64]" = attn_output.reshape(1, -1, 13, 64);  attn_output = None

        # File: transformers/integrations/sdpa_attention.py:206 in sdpa_attention_forward, code: attn_output = attn_output.transpose(1, 2).contiguous()
        transpose_3: "f32[1, 13, 9, 64]" = attn_output_1.transpose(1, 2);  attn_output_1 = None
        attn_output_2: "f32[1, 13, 9, 64]" = transpose_3.contiguous();  transpose_3 = None

        # File: transformers/models/llama/modeling_llama.py:268 in forward, code: attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        reshape_1: "f32[1, 13, 576]" = attn_output_2.reshape(1, 13, -1);  attn_output_2 = None
        attn_output_3: "f32[1, 13, 576]" = reshape_1.contiguous();  reshape_1 = None

        # No stacktrace found for following nodes
        sfmp_model_layers_0_self_attn_o_proj_w4: "u8[576, 288]" = self.sfmp_model_layers_0_self_attn_o_proj_w4
        sfmp_model_layers_0_self_attn_o_proj_sz: "bf16[9, 576, 2]" = self.sfmp_model_layers_0_self_attn_o_proj_sz
        linear_cpu_int4_default_3: "f32[1, 13, 576]" = torch.ops.sfmp.linear_cpu_int4.default(attn_output_3, sfmp_model_layers_0_self_attn_o_proj_w4, sfmp_model_layers_0_self_attn_o_proj_sz, sfmp_empty_perm_cpu, sfmp_empty_perm_cpu, 576, 576, 64);  attn_output_3 = sfmp_model_layers_0_self_attn_o_pro …[53 more chars]

        # File: transformers/models/llama/modeling_llama.py:306 in forward, code: hidden_states = residual + hidden_states
        hidden_states_3: "f32[1, 13, 576]" = inputs_embeds + linear_cpu_int4_default_3;  inputs_embeds = linear_cpu_int4_default_3 = None

        # File: transformers/models/llama/modeling_llama.py:63 in forward, code: hidden_states = hidden_states.to(torch.float32)
        hidden_states_4: "f32[1, 13, 576]" = hidden_states_3.to(torch.float32)

        # File: transformers/models/llama/modeling_llama.py:64 in forward, code: variance = hidden_states.pow(2).mean(-1, keepdim=True)
        pow_2: "f32[1, 13, 576]" = hidden_states_4.pow(2)
        variance_1: "f32[1, 13, 1]" = pow_2.mean(-1, keepdim = True);  pow_2 = None

        # File: transformers/models/llama/modeling_llama.py:65 in forward, code: hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        add_5: "f32[1, 13, 1]" = variance_1 + 9.999999747378752e-06;  variance_1 = None
        rsqrt_1: "f32[1, 13, 1]" = torch.rsqrt(add_5);  add_5 = None
        hidden_states_5: "f32[1, 13, 576]" = hidden_states_4 * rsqrt_1;  hidden_states_4 = rsqrt_1 = None

        # File: transformers/models/llama/modeling_llama.py:66 in forward, code: return self.weight * hidden_states.to(input_dtype)
        to_6: "f32[1, 13, 576]" = hidden_states_5.to(torch.float32);  hidden_states_5 = None
        hidden_states_6: "f32[1, 13, 576]" = l_self_modules_model_modules_layers_modules_0_modules_post_attention_layernorm_parameters_weight_ * to_6;  l_self_modules_model_modules_layers_modules_0_modules_post_attention_layernorm_parameters_weight_ = to_6 = None

        # No stacktrace found for following nodes
        sfmp_model_layers_0_mlp_gate_proj_w4: "u8[1536, 288]" = self.sfmp_model_layers_0_mlp_gate_proj_w4
        sfmp_model_layers_0_mlp_gate_proj_sz: "bf16[9, 1536, 2]" = self.sfmp_model_layers_0_mlp_gate_proj_sz
        sfmp_model_layers_0_mlp_gate_proj_col_perm: "i64[576]" = self.sfmp_model_layers_0_mlp_gate_proj_col_perm
        index_select_4: "f32[1, 13, 576]" = torch.index_select(hidden_states_6, -1, sfmp_model_layers_0_mlp_gate_proj_col_perm);  hidden_states_6 = sfmp_model_layers_0_mlp_gate_proj_col_perm = None
        linear_cpu_int4_default_4: "f32[1, 13, 1536]" = torch.ops.sfmp.linear_cpu_int4.default(index_select_4, sfmp_model_layers_0_mlp_gate_proj_w4, sfmp_model_layers_0_mlp_gate_proj_sz, sfmp_empty_perm_cpu, sfmp_empty_perm_cpu, 1536, 576, 64);  sfmp_model_layers_0_mlp_gate_proj_w4 = sfmp_model_laye …[28 more chars]

        # File: transformers/activations.py:103 in forward, code: return nn.functional.silu(input)
        silu: "f32[1, 13, 1536]" = torch.nn.functional.silu(linear_cpu_int4_default_4);  linear_cpu_int4_default_4 = None

        # No stacktrace found for following nodes
        sfmp_model_layers_0_mlp_up_proj_w4: "u8[1536, 288]" = self.sfmp_model_layers_0_mlp_up_proj_w4
        sfmp_model_layers_0_mlp_up_proj_sz: "bf16[9, 1536, 2]" = self.sfmp_model_layers_0_mlp_up_proj_sz
        linear_cpu_int4_default_5: "f32[1, 13, 1536]" = torch.ops.sfmp.linear_cpu_int4.default(index_select_4, sfmp_model_layers_0_mlp_up_proj_w4, sfmp_model_layers_0_mlp_up_proj_sz, sfmp_empty_perm_cpu, sfmp_empty_perm_cpu, 1536, 576, 64);  index_select_4 = sfmp_model_layers_0_mlp_up_proj_w4 = sfmp …[37 more chars]

        # File: transformers/models/llama/modeling_llama.py:164 in forward, code: down_proj = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
        mul_11: "f32[1, 13, 1536]" = silu * linear_cpu_int4_default_5;  silu = linear_cpu_int4_default_5 = None

        # No stacktrace found for following nodes
        sfmp_model_layers_0_mlp_down_proj_w4: "u8[576, 768]" = self.sfmp_model_layers_0_mlp_down_proj_w4
        sfmp_model_layers_0_mlp_down_proj_sz: "bf16[12, 576, 2]" = self.sfmp_model_layers_0_mlp_down_proj_sz
        linear_cpu_int4_default_6: "f32[1, 13, 576]" = torch.ops.sfmp.linear_cpu_int4.default(mul_11, sfmp_model_layers_0_mlp_down_proj_w4, sfmp_model_layers_0_mlp_down_proj_sz, sfmp_empty_perm_cpu, sfmp_empty_perm_cpu, 576, 1536, 128);  mul_11 = sfmp_model_layers_0_mlp_down_proj_w4 = sfmp_model_lay …[29 more chars]
        sfmp_model_layers_0_mlp_down_proj_row_perm_inv: "i64[576]" = self.sfmp_model_layers_0_mlp_down_proj_row_perm_inv
        index_select_6: "f32[1, 13, 576]" = torch.index_select(linear_cpu_int4_default_6, -1, sfmp_model_layers_0_mlp_down_proj_row_perm_inv);  linear_cpu_int4_default_6 = sfmp_model_layers_0_mlp_down_proj_row_perm_inv = None

        # File: transformers/models/llama/modeling_llama.py:312 in forward, code: hidden_states = residual + hidden_states
        hidden_states_7: "f32[1, 13, 576]" = hidden_states_3 + index_select_6;  hidden_states_3 = index_select_6 = None

        # File: transformers/models/llama/modeling_llama.py:63 in forward, code: hidden_states = hidden_states.to(torch.float32)
        hidden_states_8: "f32[1, 13, 576]" = hidden_states_7.to(torch.float32)

        # File: transformers/models/llama/modeling_llama.py:64 in forward, code: variance = hidden_states.pow(2).mean(-1, keepdim=True)
        pow_3: "f32[1, 13, 576]" = hidden_states_8.pow(2)
        variance_2: "f32[1, 13, 1]" = pow_3.mean(-1, keepdim = True);  pow_3 = None

        # File: transformers/models/llama/modeling_llama.py:65 in forward, code: hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        add_7: "f32[1, 13, 1]" = variance_2 + 9.999999747378752e-06;  variance_2 = None
        rsqrt_2: "f32[1, 13, 1]" = torch.rsqrt(add_7);  add_7 = None
        hidden_states_9: "f32[1, 13, 576]" = hidden_states_8 * rsqrt_2;  hidden_states_8 = rsqrt_2 = None

        # File: transformers/models/llama/modeling_llama.py:66 in forward, code: return self.weight * hidden_states.to(input_dtype)
        to_8: "f32[1, 13, 576]" = hidden_states_9.to(torch.float32);  hidden_states_9 = None

# ... 4899 lines omitted (later layers repeat the pattern above; run examples/compile_dumps.py --full DIR for everything) ...

        sfmp_model_layers_29_mlp_up_proj_sz: "bf16[9, 1536, 2]" = self.sfmp_model_layers_29_mlp_up_proj_sz
        linear_cpu_int4_default_208: "f32[1, 13, 1536]" = torch.ops.sfmp.linear_cpu_int4.default(index_select_302, sfmp_model_layers_29_mlp_up_proj_w4, sfmp_model_layers_29_mlp_up_proj_sz, sfmp_empty_perm_cpu, sfmp_empty_perm_cpu, 1536, 576, 64);  index_select_302 = sfmp_model_layers_29_mlp_up_proj_ …[47 more chars]

        # File: transformers/models/llama/modeling_llama.py:164 in forward, code: down_proj = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
        mul_272: "f32[1, 13, 1536]" = silu_29 * linear_cpu_int4_default_208;  silu_29 = linear_cpu_int4_default_208 = None

        # No stacktrace found for following nodes
        sfmp_model_layers_29_mlp_down_proj_w4: "u8[576, 768]" = self.sfmp_model_layers_29_mlp_down_proj_w4
        sfmp_model_layers_29_mlp_down_proj_sz: "bf16[12, 576, 2]" = self.sfmp_model_layers_29_mlp_down_proj_sz
        sfmp_model_layers_29_mlp_down_proj_composed: "i64[1536]" = self.sfmp_model_layers_29_mlp_down_proj_composed
        index_select_306: "f32[1, 13, 1536]" = torch.index_select(mul_272, -1, sfmp_model_layers_29_mlp_down_proj_composed);  mul_272 = sfmp_model_layers_29_mlp_down_proj_composed = None
        linear_cpu_int4_default_209: "f32[1, 13, 576]" = torch.ops.sfmp.linear_cpu_int4.default(index_select_306, sfmp_model_layers_29_mlp_down_proj_w4, sfmp_model_layers_29_mlp_down_proj_sz, sfmp_empty_perm_cpu, sfmp_empty_perm_cpu, 576, 1536, 128);  index_select_306 = sfmp_model_layers_29_mlp_down …[77 more chars]
        sfmp_model_layers_29_mlp_down_proj_row_perm_inv: "i64[576]" = self.sfmp_model_layers_29_mlp_down_proj_row_perm_inv
        index_select_307: "f32[1, 13, 576]" = torch.index_select(linear_cpu_int4_default_209, -1, sfmp_model_layers_29_mlp_down_proj_row_perm_inv);  linear_cpu_int4_default_209 = sfmp_model_layers_29_mlp_down_proj_row_perm_inv = None

        # File: transformers/models/llama/modeling_llama.py:312 in forward, code: hidden_states = residual + hidden_states
        hidden_states_239: "f32[1, 13, 576]" = hidden_states_235 + index_select_307;  hidden_states_235 = index_select_307 = None

        # File: transformers/models/llama/modeling_llama.py:63 in forward, code: hidden_states = hidden_states.to(torch.float32)
        hidden_states_240: "f32[1, 13, 576]" = hidden_states_239.to(torch.float32);  hidden_states_239 = None

        # File: transformers/models/llama/modeling_llama.py:64 in forward, code: variance = hidden_states.pow(2).mean(-1, keepdim=True)
        pow_61: "f32[1, 13, 576]" = hidden_states_240.pow(2)
        variance_60: "f32[1, 13, 1]" = pow_61.mean(-1, keepdim = True);  pow_61 = None

        # File: transformers/models/llama/modeling_llama.py:65 in forward, code: hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        add_181: "f32[1, 13, 1]" = variance_60 + 9.999999747378752e-06;  variance_60 = None
        rsqrt_60: "f32[1, 13, 1]" = torch.rsqrt(add_181);  add_181 = None
        hidden_states_241: "f32[1, 13, 576]" = hidden_states_240 * rsqrt_60;  hidden_states_240 = rsqrt_60 = None

        # File: transformers/models/llama/modeling_llama.py:66 in forward, code: return self.weight * hidden_states.to(input_dtype)
        to_124: "f32[1, 13, 576]" = hidden_states_241.to(torch.float32);  hidden_states_241 = None
        hidden_states_242: "f32[1, 13, 576]" = l_self_modules_model_modules_norm_parameters_weight_ * to_124;  l_self_modules_model_modules_norm_parameters_weight_ = to_124 = None

        # File: transformers/modeling_utils.py:5118 in slice_logits_to_keep, code: return hidden_states[:, logits_to_keep, :]
        hidden_states_243: "f32[1, 13, 576]" = hidden_states_242[(slice(None, None, None), slice(0, None, None), slice(None, None, None))];  hidden_states_242 = None

        # File: transformers/models/llama/modeling_llama.py:468 in forward, code: logits = self.lm_head(hidden_states)
        logits: "f32[1, 13, 49152]" = torch._C._nn.linear(hidden_states_243, l_self_modules_model_modules_embed_tokens_parameters_weight_, None);  hidden_states_243 = l_self_modules_model_modules_embed_tokens_parameters_weight_ = None
        return (values, keys, values_1, keys_1, values_2, keys_2, values_3, keys_3, values_4, keys_4, values_5, keys_5, values_6, keys_6, values_7, keys_7, values_8, keys_8, values_9, keys_9, values_10, keys_10, values_11, keys_11, values_12, keys_12, values_13, keys_13, values_14, keys_14, values_1 …[299 more chars]
